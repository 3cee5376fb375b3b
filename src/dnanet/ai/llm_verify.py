"""Verified generation: a node's greedy answer re-scored under the mixer's own copy of the model.

The rule (docs/scheduling.md, "Verifying LLM answers"): the mixer runs the prompt and the
node's answer through the reference model in one teacher-forced pass (a prefill, as when a
prompt is read) and looks at every position of the answer. The node's token there must be the
reference's top token. Where it is not, but within :data:`BATCH_MARGIN` logits of it, the
batched pass cannot tell a near-tie from a cheaper model: its numerics differ from a node's
token-by-token decoding by up to about 0.4 logits (measured, ``bench/llm.py``). So the mixer
re-reads the answer up to that position as a node computes it (the prompt in one pass, then
one token at a time) and there the node's token must be within :data:`LOGIT_MARGIN` of the top
(what is left: differences between machines). And the answer must end where the reference
ends it:

- ``finish_reason`` ``stop``: after the last token, an end-of-text token is within the margin
  of the top, or the answer continues with one of the request's stop strings;
- ``length``: the answer has ``max_tokens`` tokens (up to :data:`LENGTH_SLACK` fewer only
  where the reference's next token would finish a character the cut left incomplete).

The node answers in text, not tokens, so the mixer tokenizes it again. Where the node's
tokens were not the canonical split of its text (``" the" "re"`` for ``" there"``), the
reference's top token is a prefix of the remaining text: the check follows it and re-reads
the rest from there (one more pass over the rest, at most :data:`MAX_RESPLITS` times).

:func:`is_token_accepted` and :func:`is_length_consistent` are the rule itself (pure);
:func:`verify_greedy_answer` applies it with an engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dnanet.ai.llm_engine import LlamaEngine, Scored
from dnanet.ai.logprobs import LOGPROB_TOLERANCE, check_logprobs, select_answer_tokens

LOGIT_MARGIN = 0.2
"""How far (in logits, i.e. natural-log probability ratio) below the reference's top token a
node's token may be, read as a node computes it (token by token). Same machine and code: an
honest node's token is exactly the top (0); the margin leaves room for other machines' kernels
(docs/scheduling.md has the measured figures)."""
BATCH_MARGIN = 3.0
"""Past this gap in the batched pass a token fails at once (far beyond the up to ~0.4 logits
batching moves a gap); within it a token that is not the top is re-read token by token."""
REREAD_ABOVE = 0.4
"""A token at most this far below the batched top passes without a re-read: batching alone
moved honest gaps this far (0.38 logits at most over 200 canaries), and re-reading every
near-tie would cost most of a generation (``bench/llm.py`` measures both settings)."""
LENGTH_SLACK = 3
MAX_RESPLITS = 16


def is_token_accepted(gap: float, margin: float) -> bool:
    """A node's token ``gap`` logits below the reference's top passes iff within ``margin``."""
    return gap <= margin


def is_length_consistent(tokens: int, max_tokens: int, *, cut_character: bool) -> bool:
    """A ``length`` answer of ``tokens`` tokens for ``max_tokens``: exactly that many, or up
    to LENGTH_SLACK fewer when its last character was cut (and so dropped from the text)."""
    if tokens == max_tokens:
        return True
    return cut_character and max_tokens - LENGTH_SLACK <= tokens < max_tokens


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: ``reason`` None means the answer passed."""

    reason: str | None
    tokens: int
    """Answer tokens checked (the verified length of the answer)."""
    max_gap: float
    """The largest accepted gap (how close an honest answer came to the margin)."""
    passes: int
    """Batched passes run (1 + re-splits + stop checks)."""
    replayed: int
    """Answer tokens re-read one at a time (0 when every token was the batched top)."""
    cpu_s: float
    """CPU time of this process during the check."""
    logprob_divergence: float | None = None
    """With reported logprobs: their mean absolute difference from the reference's (nats a
    token, ``dnanet.ai.logprobs``)."""

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Replay:
    """The answer re-read as a llama.cpp node computes it (the prompt in one pass, then one
    token at a time), on its own context, advanced only as far as a check needs."""

    def __init__(self, engine: LlamaEngine, prompt: Sequence[int]) -> None:
        self.engine = engine
        self.prompt = list(prompt)
        self.done: list[int] = []
        self.logits: np.ndarray | None = None
        self.steps = 0

    def gap(self, path: Sequence[int], token: int | None) -> float:
        """How far below the top ``token`` is after ``path`` (None: the best end-of-text
        token)."""
        if self.logits is None or list(path[:len(self.done)]) != self.done:
            self.engine.rewind(0)
            self.logits = self.engine.next_logits(self.prompt)
            self.done = []
        for token_before in path[len(self.done):]:
            self.logits = self.engine.next_logits([token_before])
            self.done.append(token_before)
            self.steps += 1
        row = self.logits
        target = row[token] if token is not None else row[self.engine.eog].max()
        return float(row.max() - target)


class _Walk:
    """The teacher-forced pass over one answer, position by position."""

    def __init__(self, engine: LlamaEngine, prompt: Sequence[int], margin: float,
                 replay: _Replay | None = None, reread_above: float = REREAD_ABOVE,
                 logprobs: bool = False) -> None:
        self.engine = engine
        self.with_logprobs = logprobs
        self.logprobs: list[tuple[bytes, float]] = []
        """With ``logprobs``: each path token's bytes and log-probability under the
        reference (as the batched pass reads it)."""
        self.margin = margin
        self.replay = replay
        self.reread_above = reread_above
        self.n_prompt = len(prompt)
        self.path: list[int] = []
        """The answer's tokens as checked so far."""
        self.max_gap = 0.0
        self.passes = 0
        self.unfed: list[int] = list(prompt)
        """Tokens of the path not run yet (the prompt, or a re-split's first token)."""
        self.end: Scored | None = None
        """The reference's prediction after the last token run (all its logits kept)."""
        self.overshot: bytes | None = None
        """The bytes the last token ran past the answer (it held the start of a stop)."""
        engine.rewind(0)

    def _run(self, pending: list[int]) -> list[Scored]:
        """Predictions for each of ``pending`` and, last, for what follows them."""
        self.passes += 1
        lse = self.with_logprobs
        if self.unfed:
            tokens = [*self.unfed, *pending]
            rows = self.engine.score(tokens, [*pending, None], len(self.unfed) - 1,
                                     keep_last=True, with_logsumexp=lse)
            self.unfed = []
        else:
            assert self.end is not None and self.end.row is not None
            head = self.end
            first = [] if not pending else [Scored(head.top, head.top_logit,
                                                   head.logit(pending[0]), head.eog_logit,
                                                   logsumexp=head.logsumexp)]
            rows = first + self.engine.score(pending, [*pending[1:], None], keep_last=True,
                                             with_logsumexp=lse) \
                if pending else [head]
        self.end = rows[-1]
        return rows

    def _take(self, token: int, piece: bytes, logit: float, pred: Scored) -> None:
        """Add ``token`` to the path (with its log-probability when asked for)."""
        self.path.append(token)
        if self.with_logprobs:
            self.logprobs.append((piece, logit - pred.logsumexp))

    def answer_logprobs(self, answer_bytes: int) -> list[tuple[bytes, float]]:
        """The path's tokens that begin inside the answer (not a stop string after it)."""
        return select_answer_tokens(self.logprobs, answer_bytes, lambda pair: pair[0])

    def judge(self, gap: float, token: int | None) -> tuple[bool, float, str]:
        """Whether a token (None: the end of text) ``gap`` logits below the batched top
        passes; with the gap that decided and how it was read."""
        if gap <= 0:
            return True, 0.0, "batched"
        if self.replay is not None and gap <= self.reread_above:
            return True, gap, "batched"
        if self.replay is None:
            return is_token_accepted(gap, self.margin), gap, "batched"
        if gap > BATCH_MARGIN:
            return False, gap, "batched"
        exact = self.replay.gap(self.path, token)
        return is_token_accepted(exact, self.margin), exact, "token by token"

    def follow(self, data: bytes, *, overshoot: bool, tails: Sequence[bytes] = ()) -> str | None:
        """Walk the answer bytes ``data`` from the current position; None if every token
        passes. ``overshoot``: the last token may run past the end of ``data``, by bytes that
        begin one of ``tails`` when any are given (``overshot`` keeps them)."""
        rest = data
        pending = self.engine.tokenize(rest)
        resplits = 0
        while True:
            preds = self._run(pending)
            restart = False
            for k, token in enumerate(pending):
                pred = preds[k]
                piece = self.engine.piece(token)
                top_piece = self.engine.piece(pred.top)
                if overshoot and rest and pred.top != token and len(top_piece) > len(rest) \
                        and top_piece.startswith(rest) and _begins_a_tail(
                            top_piece[len(rest):], tails):
                    # The model's top token holds the rest and the start of a stop string
                    # ("\n\n" for an answer ending in "\n" before "\nUser:"): the path goes on
                    # from that token, not from the text's own split of the rest.
                    self.engine.rewind(self.n_prompt + len(self.path))
                    self._take(pred.top, top_piece, pred.top_logit, pred)
                    self.unfed = [pred.top]
                    self.overshot = top_piece[len(rest):]
                    return None
                ok, gap, how = self.judge(pred.top_logit - pred.target_logit, token)
                if ok:
                    self._take(token, piece, pred.target_logit, pred)
                    self.max_gap = max(self.max_gap, gap)
                    rest = rest[len(piece):]
                    continue
                if top_piece and not self.engine.is_eog(pred.top) and \
                        rest.startswith(top_piece) and resplits < MAX_RESPLITS:
                    # The node split its text otherwise: follow the reference's top token
                    # and read the rest again from there.
                    self.engine.rewind(self.n_prompt + len(self.path))
                    self._take(pred.top, top_piece, pred.top_logit, pred)
                    self.unfed = [pred.top]
                    rest = rest[len(top_piece):]
                    pending = self.engine.tokenize(rest)
                    resplits += 1
                    restart = True
                    break
                return (f"answer token {len(self.path)} "
                        f"({piece.decode(errors='replace')!r}) is {gap:.2f} logits below "
                        f"the reference's top ({top_piece.decode(errors='replace')!r}, read "
                        f"{how}); the margin is {self.margin}")
            if not restart:
                return None


def verify_greedy_answer(engine: LlamaEngine, prompt: str, text: str, *, finish_reason: str,
                         max_tokens: int, stops: Sequence[str], margin: float = LOGIT_MARGIN,
                         replay: LlamaEngine | None = None,
                         reread_above: float = REREAD_ABOVE,
                         logprobs: Sequence[tuple[bytes, float]] | None = None,
                         logprob_tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    """Check a node's greedy answer ``text`` to ``prompt``; the rule of the module docstring.
    ``replay`` is a second context over the same model for the token-by-token re-reads
    (None: the batched pass alone, with ``margin`` for its gaps); a batched gap up to
    ``reread_above`` passes without one (0: re-read every disagreement). ``logprobs``: the
    (token bytes, log-probability) pairs the node reported for the answer, when it was asked
    for them; an answer that passes must then also pass ``dnanet.ai.logprobs``'s rule against
    the reference's. The caller holds both engines' locks."""
    started = time.process_time()
    prompt_tokens = engine.prompt_tokens(prompt)
    if len(prompt_tokens) + max_tokens + LENGTH_SLACK + 8 > engine.n_ctx:
        raise ValueError(f"a {len(prompt_tokens)}-token prompt and {max_tokens} answer tokens "
                         f"do not fit the reference's context of {engine.n_ctx}")
    replayer = _Replay(replay, prompt_tokens) if replay is not None else None
    def new_walk() -> _Walk:
        return _Walk(engine, prompt_tokens, margin, replayer, reread_above,
                     logprobs=logprobs is not None)

    walk = new_walk()

    def verdict(reason: str | None) -> Verdict:
        divergence = None
        if reason is None and logprobs is not None:
            reference = walk.answer_logprobs(len(text.encode()))
            reason, divergence = check_logprobs(logprobs, reference,
                                                tolerance=logprob_tolerance)
        return Verdict(reason=reason, tokens=len(walk.path), max_gap=walk.max_gap,
                       passes=walk.passes, replayed=replayer.steps if replayer else 0,
                       cpu_s=time.process_time() - started, logprob_divergence=divergence)

    if finish_reason not in ("stop", "length"):
        return verdict(f"finish_reason {finish_reason!r} is neither stop nor length")
    tails = [s.encode() for s in stops] if finish_reason == "stop" else []
    reason = walk.follow(text.encode(), overshoot=bool(tails), tails=tails)
    assert walk.end is not None
    if finish_reason == "length":
        if reason is not None:
            return verdict(reason)
        cut = not _is_whole(engine.piece(walk.end.top))
        if not is_length_consistent(len(walk.path), max_tokens, cut_character=cut):
            return verdict(f"finish_reason length after {len(walk.path)} tokens, but "
                           f"max_tokens is {max_tokens}")
        return verdict(None)
    if reason is None and len(walk.path) > max_tokens:
        return verdict(f"{len(walk.path)} tokens, more than max_tokens {max_tokens}")
    end = walk.end
    gap = end.top_logit - end.eog_logit
    if reason is None and walk.overshot is not None:
        # The last token began a stop string: the rest of it must follow.
        extra = walk.overshot
        if any(extra.startswith(tail) for tail in tails):
            return verdict(None)
        for tail in (t for t in tails if t.startswith(extra)):
            if walk.follow(tail[len(extra):], overshoot=True) is None:
                return verdict(None)
        # No stop string goes on: judge the answer's own last token after all.
        passes = walk.passes
        walk = new_walk()
        walk.passes += passes
        reason = walk.follow(text.encode(), overshoot=False)
        assert walk.end is not None
        end = walk.end
        gap = end.top_logit - end.eog_logit
    if reason is None:
        if gap <= 0:  # the end of text is the model's top
            return verdict(None)
        n_past, n_path = engine.n_past, len(walk.path)
        for stop in stops:  # the usual case: a stop string follows, read in the batched pass
            if walk.follow(stop.encode(), overshoot=True) is None:
                return verdict(None)
            engine.rewind(n_past)
            del walk.path[n_path:]
            del walk.logprobs[n_path:]
            walk.end, walk.unfed = end, []
        if walk.judge(gap, None)[0]:  # an end of text that a near-tie hid
            return verdict(None)
    # The answer's last tokens may have been split around a stop string (the node's last
    # token held the answer's end and the stop's start, "\n\n" before "\nUser:", where the
    # batched pass's top was "\n", a near-tie): read the answer with each stop string after it.
    for stop in stops:
        trial = new_walk()
        if trial.follow((text + stop).encode(), overshoot=True) is None:
            trial.passes += walk.passes
            walk = trial
            return verdict(None)
        walk.passes += trial.passes
    if reason is not None:
        return verdict(reason)
    return verdict(f"finish_reason stop after {len(walk.path)} tokens, but the reference "
                   f"goes on (end of text {gap:.2f} logits below its top"
                   f"{', and no stop string follows' if stops else ''})")


def verify_sampled_answer(engine: LlamaEngine, prompt: str, text: str, *, finish_reason: str,
                          max_tokens: int, logprobs: Sequence[tuple[bytes, float]],
                          logprob_tolerance: float = LOGPROB_TOLERANCE) -> Verdict:
    """Check a node's sampled answer ``text`` to ``prompt`` (any temperature) by its reported
    ``logprobs``: a draw cannot be judged token by token, but the tokens drawn and their
    log-probabilities can. The node's reported tokens are the answer's tokens: each must be a
    token of the model, together they must spell the answer (the last may run on into a stop
    string), there are at most ``max_tokens`` of them; and their log-probabilities under the
    reference, read in one teacher-forced pass over the prompt and exactly those tokens, must
    be within ``logprob_tolerance`` of the reported ones on average (``dnanet.ai.logprobs``).
    The caller holds the engine's lock."""
    started = time.process_time()

    def verdict(reason: str | None, tokens: int = 0, divergence: float | None = None,
                passes: int = 0) -> Verdict:
        return Verdict(reason=reason, tokens=tokens, max_gap=0.0, passes=passes, replayed=0,
                       cpu_s=time.process_time() - started, logprob_divergence=divergence)

    if finish_reason not in ("stop", "length"):
        return verdict(f"finish_reason {finish_reason!r} is neither stop nor length")
    if len(logprobs) > max_tokens:
        return verdict(f"{len(logprobs)} tokens reported, more than max_tokens {max_tokens}")
    data = text.encode()
    spelled = b"".join(piece for piece, _ in logprobs)
    last = len(logprobs[-1][0]) if logprobs else 0
    if not (spelled == data or (finish_reason == "stop" and spelled.startswith(data)
                                and len(spelled) - last < len(data))):
        return verdict("the reported logprobs' tokens do not spell the answer")
    ids: list[int] = []
    for piece, _ in logprobs:
        token = engine.token_of(piece)
        if token is None:
            return verdict(f"the reported token {piece!r} is not a token of the model")
        ids.append(token)
    prompt_tokens = engine.prompt_tokens(prompt)
    if not ids:
        return verdict(None)
    if len(prompt_tokens) + len(ids) > engine.n_ctx:
        raise ValueError(f"a {len(prompt_tokens)}-token prompt and {len(ids)} answer tokens "
                         f"do not fit the reference's context of {engine.n_ctx}")
    engine.rewind(0)
    rows = engine.score([*prompt_tokens, *ids[:-1]], ids, len(prompt_tokens) - 1,
                        with_logsumexp=True)
    engine.rewind(0)
    reference = [(piece, row.target_logit - row.logsumexp)
                 for (piece, _), row in zip(logprobs, rows, strict=True)]
    reason, divergence = check_logprobs(logprobs, reference, tolerance=logprob_tolerance)
    return verdict(reason, len(ids), divergence, 1)


def _begins_a_tail(extra: bytes, tails: Sequence[bytes]) -> bool:
    """Whether ``extra`` starts one of ``tails`` or holds one whole (any, without tails)."""
    return not tails or any(t.startswith(extra) or extra.startswith(t) for t in tails)


def _is_whole(piece: bytes) -> bool:
    """Whether ``piece`` is whole UTF-8 characters (a byte token of a longer one is not)."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["BATCH_MARGIN", "LENGTH_SLACK", "LOGIT_MARGIN", "MAX_RESPLITS", "REREAD_ABOVE",
           "Verdict",
           "is_length_consistent", "is_token_accepted", "verify_greedy_answer",
           "verify_sampled_answer"]
