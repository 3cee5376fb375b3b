"""The devnet's node table and the in-place redraw of the running epoch's table."""

from __future__ import annotations

import io

from dnanet.devnet import LiveBlock, NodeRow, describe_hardware, format_table
from dnanet.node.hardware import Hardware
from dnanet.params import WEI_PER_DNA


def test_the_table_shows_what_was_measured_and_earned() -> None:
    measured = NodeRow(address="0x" + "ab" * 20, profile="normal", hardware="cpu 2c",
                       latency_ms=1.234, gflops=3.5, download_mbs=812.4, upload_mbs=640.6,
                       challenges=6, failures=1, score=4321, reward=5 * WEI_PER_DNA // 2,
                       claimed=WEI_PER_DNA)
    silent = NodeRow(address="0x" + "cd" * 20, profile="offline", hardware="cpu 2c",
                     challenges=3, failures=3)
    header, first, second = format_table([measured, silent], final=True)
    assert header.split() == ["node", "profile", "hw", "latency", "GFLOP/s", "down/up",
                              "MB/s", "failed", "score", "reward", "claimed"]
    # Scores and amounts as the Validator's dashboard prints them.
    assert first.split() == ["0xababababab", "normal", "cpu", "2c", "1.23ms", "3.50", "812/641",
                             "1/6", "0.004321", "2.50", "1.00"]
    # Nothing measured: dashes, not zeros that look like measurements.
    assert second.split() == ["0xcdcdcdcdcd", "offline", "cpu", "2c", "-", "-", "-", "3/3",
                              "0.000000", "0.00", "0.00"]
    # While the epoch runs nothing is claimed yet: no claimed column.
    running = format_table([measured], final=False)
    assert "claimed" not in running[0] and running[1].split()[-1] == "2.50"


def test_a_live_block_redraws_in_place() -> None:
    stream = io.StringIO()
    live = LiveBlock(stream)
    live.show(["a", "b"])
    live.show(["c"])
    live.clear()
    live.clear()  # nothing left to erase
    assert stream.getvalue() == "a\nb\n\x1b[2F\x1b[Jc\n\x1b[1F\x1b[J"


def test_the_host_is_described_once() -> None:
    host = Hardware(cpu_model="AMD EPYC", cpu_cores=2, memory_bytes=24 * 2**30, gpu=None)
    assert describe_hardware(host) == "AMD EPYC, 2 cores, 24 GiB memory"
    gpu = Hardware(cpu_model="x", cpu_cores=16, memory_bytes=2**37, gpu="H200")
    assert describe_hardware(gpu) == "x, 16 cores, 128 GiB memory, GPU H200"
