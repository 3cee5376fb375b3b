"""Compute challenge cost: the node's prove time against the mixer's verify time.

    python bench/compute.py                 # "cpu" size, a small table
    python bench/compute.py --size gpu --device cuda --workers 16
    python bench/compute.py --json          # one JSON line

Node: compute_product (generate A and B, multiply, hash rows, build the tree) + open_rows.
Mixer: derive_check_indices + verify_openings. Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

from dnanet.protocol.challenges import (
    COMPUTE_SIZES,
    compute_product,
    derive_check_indices,
    derive_kind_seeds,
    detection_probability,
    open_rows,
    verified_flops,
    verify_openings,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", choices=sorted(COMPUTE_SIZES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=1, help="threads hashing rows")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    size = COMPUTE_SIZES[args.size]

    node_s: list[float] = []
    mixer_s: list[float] = []
    for i in range(args.repeat + 1):  # the first run warms BLAS and the allocator, not counted
        seeds = derive_kind_seeds(hashlib.sha256(b"bench" + bytes([i])).digest())
        t0 = time.perf_counter()
        answer = compute_product(seeds.compute_seed, size, args.device, args.workers)
        t1 = time.perf_counter()
        indices = derive_check_indices(seeds.check_seed, answer.root, size)
        t2 = time.perf_counter()
        openings = open_rows(answer, indices)
        t3 = time.perf_counter()
        verify_openings(seeds.compute_seed, seeds.check_seed, size, answer.root, openings)
        t4 = time.perf_counter()
        if i:
            node_s.append((t1 - t0) + (t3 - t2))
            mixer_s.append((t2 - t1) + (t4 - t3))

    node, mixer = statistics.median(node_s), statistics.median(mixer_s)
    gflops = verified_flops(size) / node / 1e9
    if args.json:
        print(
            json.dumps(
                {
                    "compute_verify_over_prove": round(mixer / node, 5),
                    "node_compute_s": round(node, 4),
                    "mixer_verify_s": round(mixer, 4),
                    "verified_gflops": round(gflops, 2),
                }
            )
        )
        return
    print(f"size {args.size}: n={size.n} rows={size.rows} checks={size.checks}")
    print(f"  {'node: compute + commit + open':34} {node:9.4f} s")
    print(f"  {'mixer: draw checks + verify':34} {mixer:9.4f} s")
    print(f"  {'verify / prove':34} {mixer / node:9.4f}")
    print(f"  {'verified GFLOP/s':34} {gflops:9.2f}")
    for f in (0.01, 0.1, 0.5):
        print(
            f"  {f'P(catch | {f:.0%} rows skipped) >=':34} {detection_probability(f, size.checks):9.4f}"
        )


if __name__ == "__main__":
    main()
