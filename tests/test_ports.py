"""Ports for a host's roles (``dnanet.ports.free_port``): below the kernel's ephemeral range,
where no outgoing connection can take them before the role binds, free, and never handed out
twice."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import dnanet.ports as ports
from dnanet.ports import PORT_FLOOR, ephemeral_port_range, free_port


def test_ports_lie_below_the_ephemeral_range_and_are_never_given_twice() -> None:
    low, high = ephemeral_port_range()
    assert 0 < low <= high <= 65535
    given = [free_port() for _ in range(200)]
    assert len(set(given)) == len(given)
    if low - PORT_FLOOR >= 1000:
        assert all(PORT_FLOOR <= port < low for port in given)
    for port in given[:20]:  # each is free to bind
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", PORT_FLOOR + 17))
        sock.listen()
        yield PORT_FLOOR + 17


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch,
                                                listening: int) -> None:
    monkeypatch.setattr(ports, "ephemeral_port_range", lambda: (40000, 60999))
    tries = iter([listening, listening, PORT_FLOOR + 18])
    monkeypatch.setattr(ports._random, "randrange", lambda low, high: next(tries))
    monkeypatch.setattr(ports, "_given", set())
    assert free_port() == PORT_FLOOR + 18


def test_without_room_below_the_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_port_range", lambda: (PORT_FLOOR + 10, 60999))
    monkeypatch.setattr(ports, "_given", set())
    given = {free_port() for _ in range(20)}
    assert len(given) == 20 and all(0 < port <= 65535 for port in given)
