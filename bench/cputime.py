"""CPU time of processes, for the benchmarks' CPU-per-operation figures."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def process_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds so far of this process (``pid`` None) or of process ``pid``
    (Linux /proc; 0 where it cannot be read)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


__all__ = ["children_cpu_s", "process_cpu_s"]
