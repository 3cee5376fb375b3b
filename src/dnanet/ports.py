"""Ports for the roles a devnet starts on one host (and for anvil), chosen a moment before the
role binds them.

``free_port`` picks below the kernel's ephemeral range. Every outgoing connection on the host
takes its local port from that range, so a port picked there by binding port 0 (the kernel's
choice, from the same range) can be taken by a connection another role opens before the role
it was picked for binds it: a fidelity devnet lost a node that way ("port ... is in use by
another process") in 2 of 11 runs with twelve nodes reading the chain while they started. Below
the range only a listener can take it, and none is given the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

PORT_FLOOR = 20_000
"""The lowest port ``free_port`` picks (below the usual services' and above most fixed ones)."""

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's setting; elsewhere 32768-65535,
    which covers the BSDs' and macOS's 49152-65535)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 65535
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listened on a moment ago and that this process has
    not handed out before: below the ephemeral range where it is wide enough (1,000 ports or
    more), else the kernel's choice."""
    low, _ = ephemeral_port_range()
    with _lock:
        if low - PORT_FLOOR >= 1000:
            for _ in range(500):
                port = _random.randrange(PORT_FLOOR, low)
                if port not in _given and _bindable(host, port):
                    _given.add(port)
                    return port
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _given:
                _given.add(port)
                return port
    raise OSError(f"no free TCP port on {host}")


__all__ = ["PORT_FLOOR", "ephemeral_port_range", "free_port"]
