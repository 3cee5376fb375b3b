"""A timed product beside the node's own work: in a thread of the node's process, or in its
compute process (``dnanet.node.compute_process``), measured side by side in one run.

    .venv/bin/python bench/compute_process.py --json

The node's event loop stands in as a thread running Python without pause (as it does while it
hashes a transfer's frames or serves users' requests). Each figure is the median of
``--repeat`` local-preset products on one BLAS thread; the last line with ``--json`` is one
object:

- ``thread_alone_ms`` / ``process_alone_ms``: the product with nothing beside it;
- ``thread_beside_busy_over_alone``: how much longer the product takes in a thread beside the
  busy one (it waits for Python's lock each time it gives it up: every BLAS call, every row's
  hash);
- ``process_beside_busy_over_alone``: the same in the compute process (target: near 1 where a
  core is free for it);
- ``process_alone_over_thread_alone``: what the process costs when nothing competes (the
  pipe's round trip);
- ``process_beside_busy_node_switch_interval_over_alone``: the same with the interval at which
  Python hands its lock to a waiting thread set as ``node run`` sets it
  (``dnanet.service.loop.TIMING_SWITCH_INTERVAL_S``, 1 ms against Python's 5 ms): the thread that waits for the root
  gets the lock back sooner.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dnanet.node.compute_process import ComputeProcess
from dnanet.node.hardware import limit_compute_threads
from dnanet.params import LOCAL
from dnanet.protocol.challenges.compute import ComputeSize, compute_product
from dnanet.service.loop import TIMING_SWITCH_INTERVAL_S


@contextmanager
def busy_python() -> Iterator[None]:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def median_ms(run: Callable[[bytes], object], repeat: int) -> float:
    times = []
    for i in range(repeat):
        seed = i.to_bytes(32, "big")
        t0 = time.perf_counter()
        run(seed)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    sizes = LOCAL.sizes_for_class(0)
    size = ComputeSize(n=sizes.compute_n, rows=sizes.compute_rows, checks=sizes.compute_checks)
    limit_compute_threads(1)
    process = ComputeProcess("cpu", threads=1)
    process.wait_ready()
    try:
        def in_thread(seed: bytes) -> object:
            return compute_product(seed, size, "cpu")

        def in_process(seed: bytes) -> object:
            held = process.compute(seed, size)
            held.release()
            return held

        thread_alone = median_ms(in_thread, args.repeat)
        process_alone = median_ms(in_process, args.repeat)
        with busy_python():
            thread_busy = median_ms(in_thread, max(3, args.repeat // 3))
            process_busy = median_ms(in_process, args.repeat)
            interval = sys.getswitchinterval()
            sys.setswitchinterval(TIMING_SWITCH_INTERVAL_S)
            try:
                process_busy_short = median_ms(in_process, args.repeat)
            finally:
                sys.setswitchinterval(interval)
    finally:
        process.close()
    out = {
        "size": f"{size.rows}x{size.n}",
        "thread_alone_ms": round(thread_alone, 2),
        "process_alone_ms": round(process_alone, 2),
        "thread_beside_busy_ms": round(thread_busy, 2),
        "process_beside_busy_ms": round(process_busy, 2),
        "thread_beside_busy_over_alone": round(thread_busy / thread_alone, 2),
        "process_beside_busy_over_alone": round(process_busy / process_alone, 2),
        "process_alone_over_thread_alone": round(process_alone / thread_alone, 3),
        "process_beside_busy_node_switch_interval_ms": round(process_busy_short, 2),
        "process_beside_busy_node_switch_interval_over_alone": round(
            process_busy_short / process_alone, 2),
    }
    for key, value in out.items():
        print(f"  {key}: {value}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
