"""A devnet's mixers take turns at timed compute steps (``HostStepLock``): the nodes of a
devnet share one host, and a product timed while another node computes reads slower."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from dnanet.mixer.sessions import HostStepLock
from dnanet.protocol.messages import Outcome
from protocol_fixtures import make_prover, run_session
from test_session import MIXER, MIXERS, NODE, TIMED, FakeLink


def test_holders_on_one_file_never_overlap_and_a_cancelled_waiter_leaves_it_free(
        tmp_path: Path) -> None:
    path = tmp_path / "timing.lock"
    inside: list[int] = []
    overlaps: list[int] = []

    async def hold(lock: HostStepLock, who: int) -> None:
        async with lock.hold():
            if inside:
                overlaps.append(who)
            inside.append(who)
            await asyncio.sleep(0.01)
            inside.remove(who)

    async def main() -> None:
        # Separate instances, as separate mixers (or processes) have.
        await asyncio.gather(*(hold(HostStepLock(path, 1), i) for i in range(6)))
        first = HostStepLock(path, 1).hold()
        await first.__aenter__()
        waiter = asyncio.create_task(hold(HostStepLock(path, 1), 9))
        await asyncio.sleep(0.02)
        assert not waiter.done()  # waits while the lock is held
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        await first.__aexit__(None, None, None)
        await asyncio.wait_for(hold(HostStepLock(path, 1), 10), timeout=1)

    asyncio.run(main())
    assert overlaps == []


def test_a_lock_of_two_slots_lets_two_holders_in_and_never_three(tmp_path: Path) -> None:
    path = tmp_path / "timing.lock"
    inside: list[int] = []
    most = 0

    async def hold(who: int) -> None:
        nonlocal most
        async with HostStepLock(path, 2).hold():
            inside.append(who)
            most = max(most, len(inside))
            await asyncio.sleep(0.01)
            inside.remove(who)

    async def main() -> None:
        await asyncio.gather(*(hold(i) for i in range(8)))

    asyncio.run(main())
    assert most == 2
    assert HostStepLock(path).slots >= 1  # by default one slot per core


def test_the_wait_for_the_hosts_turn_is_not_timed() -> None:
    """Each attempt of the compute step runs inside the gate, held anew for each, and the clock
    starts once the gate is held: a 5 s wait for another node's product before each attempt
    leaves the 50 ms compute figure as it is."""
    link = FakeLink(make_prover(NODE, MIXERS), rtt_ns=100_000, down_bps=10**8, up_bps=10**8,
                    compute_ns=50_000_000)
    computed_inside: list[bool] = []
    held = False
    turns = 0

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        nonlocal held, turns
        link.now += 5_000_000_000  # another node's turn
        turns += 1
        held = True
        try:
            yield
        finally:
            held = False

    original = link.compute

    async def compute(challenge_id: bytes, compute_seed: bytes) -> bytes:
        computed_inside.append(held)
        return await original(challenge_id, compute_seed)

    link.compute = compute  # type: ignore[method-assign]
    report = run_session(link, MIXER, 0, NODE.address, preset=TIMED, clock=link.clock,
                         compute_gate=gate)
    assert report.outcome == Outcome.OK, report.reason
    attempts = TIMED.hardware_classes[0].compute_attempts
    assert computed_inside == [True] * attempts and turns == attempts == 3
    assert abs(report.compute_us * 1000 - 50_000_000) <= 5_000_000
