"""A Validator as several processes (``validator run --processes``): one port, one database.

Two daemons in one test process stand for two processes here (each with its own listening
socket on the shared port, intake, views and store connection); the supervisor and the shared
metrics run real child processes. The whole command, with a serving process killed mid-epoch,
runs in ``test_e2e_network.py``'s anvil devnet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from dnanet.errors import DnanetError
from dnanet.service.http import listen
from dnanet.validator.daemon import ValidatorDaemon, add_validator_commands
from dnanet.validator.processes import ServingProcesses
from dnanet.validator.store import EpochClosed
from validator_helpers import (
    Corpus,
    FakeGateway,
    build_network,
    last_round_start,
    make_corpus,
    run,
    settle_block,
)

LABEL = "processes"


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(build_network(mixers=4, nodes=12, label=LABEL)[1], 2)


@pytest.fixture
def gateway() -> FakeGateway:
    gw, _ = build_network(mixers=4, nodes=12, label=LABEL)
    gw.advance_to(last_round_start(gw, 0))
    return gw


def test_listen_shares_a_port_only_when_asked(tmp_path: Path) -> None:
    first = listen("127.0.0.1", 0, share=True)
    port = first.getsockname()[1]
    try:
        second = listen("127.0.0.1", port, join=True)
        second.close()
        with pytest.raises(DnanetError) as plain:  # a port in use stays an error
            listen("127.0.0.1", port)
        assert plain.value.field == "port"
        # A second Validator sharing the port is refused even though the first shares it.
        with pytest.raises(DnanetError):
            listen("127.0.0.1", port, share=True)
    finally:
        first.close()


def test_two_processes_share_the_port_and_the_database(gateway: FakeGateway, corpus: Corpus,
                                                       tmp_path: Path) -> None:
    """Certificates over fresh connections reach both; each is stored once; a batch stored by
    one is a duplicate to the other; the follower sees the chain move and refuses an epoch
    the first closed."""
    *certificates, late = corpus.certificates[0]  # the last arrives after the rollup

    async def body() -> None:
        first = ValidatorDaemon(gateway, tmp_path, run_settlement=False,
                                sock=listen("127.0.0.1", 0, share=True))
        await first.start()
        port = int(first.url.rsplit(":", 1)[1])
        other = ValidatorDaemon(gateway, tmp_path, run_settlement=False, follow_chain=True,
                                poll_s=0.02, sock=listen("127.0.0.1", port, join=True))
        await other.start()
        try:
            # A new connection per certificate: the kernel spreads them over both sockets.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=first.url, limits=limits, timeout=30) as client:
                answers = await asyncio.gather(*(
                    client.post("/v1/certificates", content=c.to_json()) for c in certificates))
                assert [a.status_code for a in answers] == [200] * len(certificates)
                assert sum(a.json()["accepted"] for a in answers) == sum(
                    len(c.reports) for c in certificates)
                taken = [d.metrics.totals()["accepted"] for d in (first, other)]
                assert sum(taken) == len(certificates)
                # 48 more connections: that the kernel sent all 63 to one process would have
                # a chance of 2**-62.
                await asyncio.gather(*(client.get("/health") for _ in range(48)))
                served = [_requests_served(d) for d in (first, other)]
                assert sum(served) == len(certificates) + 48
                assert min(served) > 0, f"one process took every connection: {served}"
                assert first.store.certificate_count(0) == len(certificates)
                # Every route is served by either process, from the shared database.
                listed = await client.get("/v1/epochs/0/certificates")
                assert len(listed.json()) == len(certificates)

            # Stored by one, a duplicate to the other (whichever process took it in).
            for daemon in (first, other):
                again = await daemon.intake.submit(certificates[0].to_json())
                assert again.duplicate and again.accepted == 0

            # The other follows the chain's position instead of settling.
            gateway.advance_to(settle_block(gateway, 0))
            await _until(lambda: other.loop.head == gateway.block_number())
            assert other.status()["head"] == gateway.block_number()

            # The first closes epoch 0 for its rollup: the other refuses it from the database.
            await first.loop.publish(0)
            with pytest.raises(EpochClosed):
                await other.intake.submit(late.to_json())
            assert other.store.certificate_count(0) == len(certificates)

            # Settled on chain: the other learns it from the chain and drops the view.
            other.views.view(0)
            gateway.next_epoch = 1
            await _until(lambda: other.loop.chain_next == 1)
            assert 0 not in other.views._views
        finally:
            await other.stop()
            await first.stop()

    run(body())


def _requests_served(daemon: ValidatorDaemon) -> int:
    """The requests ``daemon`` answered (its own ``dnanet_http_requests`` counter)."""
    return int(sum(sample.value for metric in daemon.app.state.registry.collect()
                   if metric.name == "dnanet_http_requests" for sample in metric.samples
                   if sample.name.endswith("_total")))


async def _until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- the supervisor -----------------------------------------------------------------------------


def _sleeper(marker: Path) -> list[str]:
    """A child that records its pid, then waits for SIGTERM (and exits 0 on it)."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        while True:
            time.sleep(0.05)
    """)
    return [sys.executable, "-c", code]


def test_the_supervisor_restarts_a_process_that_dies_and_stops_them_all(
        tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    restarts: list[int] = []

    async def body() -> None:
        processes = ServingProcesses(_sleeper(marker), 2, restart_s=0.05, max_restart_s=0.4,
                                     poll_s=0.02, on_restart=lambda: restarts.append(1))
        await processes.start()
        try:
            await _until(lambda: marker.exists() and len(marker.read_text().split()) == 2)
            first, second = processes.pids()
            os.kill(first, signal.SIGKILL)
            await _until(lambda: len(marker.read_text().split()) == 3)
            assert restarts == [1]
            assert second in processes.pids() and first not in processes.pids()
            # Dying again soon after its start: the wait doubles (0.05 s, then 0.1 s).
            (restarted,) = set(processes.pids()) - {second}
            os.kill(restarted, signal.SIGKILL)
            await _until(lambda: len(marker.read_text().split()) == 4)
            assert [s.delay for s in processes.serving if s.restarts] == [0.1]
            running = processes.pids()
        finally:
            await processes.stop(timeout_s=5)
        assert processes.pids() == []
        for pid in running:  # stopped with SIGTERM, and reaped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    run(body())


def test_the_supervisor_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"open({str(ready)!r}, 'w').close()\nwhile True: time.sleep(0.05)\n")

    async def body() -> None:
        processes = ServingProcesses([sys.executable, "-c", code], 1, poll_s=0.02)
        await processes.start()
        (pid,) = processes.pids()
        await _until(ready.exists)  # SIGTERM is ignored from here on
        t0 = time.monotonic()
        await processes.stop(timeout_s=0.5)
        assert time.monotonic() - t0 < 5
        assert processes.pids() == []
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)

    run(body())


# -- shared metrics -----------------------------------------------------------------------------

_COUNT = """
import sys
from pathlib import Path
from dnanet.service.http import create_app, share_metrics
from dnanet.validator.server import ValidatorMetrics

share_metrics(Path(sys.argv[1]), clear=sys.argv[3] == "clear")
app = create_app("t", shared_metrics=True)
metrics = ValidatorMetrics(app.state.registry, app.state.exposition)
for _ in range(int(sys.argv[2])):
    metrics.intake_result("accepted", 2)
print(metrics.totals()["accepted"], metrics.totals()["reports"])
"""


def test_metrics_add_up_over_the_processes_of_one_validator(tmp_path: Path) -> None:
    def count(n: int, mode: str = "keep") -> str:
        out = subprocess.run([sys.executable, "-c", _COUNT, str(tmp_path / "m"), str(n), mode],
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    assert count(3, "clear") == "3 6"
    assert count(4) == "7 14"  # the first process's counts are still there
    assert count(1, "clear") == "1 2"  # a new Validator starts from zero


def test_shared_metrics_need_a_directory() -> None:
    code = ("from dnanet.service.http import create_app\n"
            "create_app('t', shared_metrics=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "share_metrics" in out.stderr


def test_the_command_line_takes_processes_and_the_serving_command() -> None:
    parser = argparse.ArgumentParser(prog="dnanet")
    add_validator_commands(parser.add_subparsers(dest="command"))
    common = ["--data-dir", "d", "--deployment", "n.json"]
    args = parser.parse_args(["validator", "run", *common, "--keystore", "v.json",
                              "--processes", "4"])
    assert (args.processes, args.workers) == (4, None)  # workers: 0 with --processes
    serve = parser.parse_args(["validator", "serve", *common, "--port", "9000",
                               "--rpc", "http://127.0.0.1:8545", "--validator", "0xab",
                               "--parent", "77"])
    assert (serve.port, serve.workers, serve.validator, serve.parent) == (9000, 0, "0xab", 77)
    assert serve.handler is not args.handler
    with pytest.raises(SystemExit):  # the port is not optional: it is the Validator's
        parser.parse_args(["validator", "serve", *common, "--rpc", "http://127.0.0.1:8545"])
    with pytest.raises(SystemExit):  # by the parser: before any keystore is read
        parser.parse_args(["validator", "run", *common, "--keystore", "v.json",
                           "--processes", "0"])


_ORPHAN = """
import asyncio, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from dnanet.service.http import listen
from dnanet.service.loop import run
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import build_network, last_round_start

data_dir = Path(sys.argv[1])
gw, _ = build_network(mixers=4, nodes=4, label="orphan")
gw.advance_to(last_round_start(gw, 0))
first = os.getpid()
if os.fork():  # this process stands for the first one: it dies once the other serves
    while not (data_dir / "pid").exists():
        time.sleep(0.01)
    os._exit(0)


async def main() -> None:
    daemon = ValidatorDaemon(gw, data_dir, run_settlement=False, follow_chain=True,
                             poll_s=0.05, sock=listen("127.0.0.1", 0), parent_pid=first)
    await daemon.start()
    (data_dir / "pid").write_text(str(os.getpid()))
    await daemon.run()  # returns once it has noticed its first process is gone
    (data_dir / "stopped").write_text("clean")

run(main())
"""


def test_a_process_whose_first_process_died_stops_itself(tmp_path: Path) -> None:
    """The first process dies (SIGKILL, a crash): a process it started notices within a
    poll and stops cleanly instead of serving on alone."""
    log = tmp_path / "log"
    with log.open("wb") as out:  # a file, not a pipe: the other process inherits it
        first = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(tmp_path),
                                  str(Path(__file__).parent)], stdout=out,
                                 stderr=subprocess.STDOUT)
    assert first.wait(timeout=60) == 0, log.read_text()
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 30
    while not (tmp_path / "stopped").exists() or _running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError("the process kept serving after its first process died")
        time.sleep(0.05)
    assert (tmp_path / "stopped").read_text() == "clean"


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (not exited, nor exited and waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
