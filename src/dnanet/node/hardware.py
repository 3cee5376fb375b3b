"""Probe the node's hardware, for the operator's information.

The class a node declares (which picks its challenge sizes) follows the device its compute
actually runs on (``declared_class``), not what the probe finds: a GPU that torch cannot use
(torch missing, a CPU-only build, or ``--device cpu``) leaves the node in the CPU class.
Scores come from measured work, never from this."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLASS_CPU = 0
CLASS_GPU = 1


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    gpu: str | None
    """The GPU the probe found (through torch, else nvidia-smi); compute may not use it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # torch absent or broken: fall back to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5, check=True)
            name = out.stdout.strip().splitlines()
            return name[0] if name else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def declared_class(compute_device: str) -> int:
    """The hardware class a node declares: GPU only when its compute runs on a CUDA device
    (``compute_device`` as resolved by ``resolve_compute_device``: "cpu" or "cuda")."""
    return CLASS_GPU if compute_device == "cuda" else CLASS_CPU


def limit_compute_threads(threads: int) -> None:
    """Run this process's CPU matrix products (numpy's BLAS) on at most ``threads`` threads.

    A node uses every core by default. Several nodes on one host (a devnet) each get their
    share instead: OpenBLAS threads spin while they wait for each other, so two nodes' products
    at once on 2 threads each took 3.5x as long as one alone, and scattered 3x from one
    challenge to the next, where on 1 thread each they took as long as alone."""
    if threads < 1:
        raise ValueError(f"compute threads must be at least 1, not {threads}")
    import numpy  # noqa: F401  (its BLAS must be loaded for the limit to reach it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def devnet_compute_threads(nodes: int) -> int:
    """Each node's share of this host's cores in a devnet of ``nodes`` nodes (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, nodes))


def probe_hardware(*, with_gpu: bool = True) -> Hardware:
    return Hardware(cpu_model=_cpu_model(), cpu_cores=os.cpu_count() or 1,
                    memory_bytes=_memory_bytes(), gpu=_gpu() if with_gpu else None)


__all__ = ["CLASS_CPU", "CLASS_GPU", "Hardware", "declared_class", "devnet_compute_threads",
           "limit_compute_threads", "probe_hardware"]
