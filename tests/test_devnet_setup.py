"""``dnanet devnet --setup-blocks``: the blocks between deployment and genesis are an option,
and a set-up that needs more than it allows says how many it took and what to pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dnanet.cli import build_parser
from dnanet.devnet import SETUP_BLOCKS, run_devnet
from dnanet.errors import DnanetError
from dnanet.params import TEST
from test_secrets import RecordingDevnet


def test_setup_blocks_is_an_option_with_a_default() -> None:
    parser = build_parser(["devnet"])
    assert parser.parse_args(["devnet"]).setup_blocks == SETUP_BLOCKS
    assert parser.parse_args(["devnet", "--setup-blocks", "900"]).setup_blocks == 900
    with pytest.raises(SystemExit):
        parser.parse_args(["devnet", "--setup-blocks", "0"])


def test_an_embedded_setup_beyond_its_blocks_says_what_to_pass(tmp_path: Path) -> None:
    async def main() -> None:
        await run_devnet(nodes=1, mixers=1, epochs=1, preset=TEST, data_dir=tmp_path,
                         summary=None, backend="trivial", out=lambda _: None, setup_blocks=3)

    with pytest.raises(DnanetError) as info:
        asyncio.run(main())
    message = str(info.value)
    assert message.startswith("setting up took ")
    used = int(message.split()[3])
    assert used > 3
    assert message.endswith(f"blocks, more than --setup-blocks 3 allows before genesis: run "
                            f"again with --setup-blocks {max(6, used + used // 2)}")


class _RegisteringNothing(RecordingDevnet):
    """The process devnet whose nodes never register (their processes are not started)."""

    async def _wait_healthy(self, name: str, url: str, timeout_s: float = 60) -> None:
        return None


def test_nodes_that_miss_genesis_are_counted_and_the_option_named(tmp_path: Path) -> None:
    devnet = _RegisteringNothing(nodes=2, mixers=1, preset=TEST, data_dir=tmp_path,
                                 out=lambda _: None, backend="trivial", setup_blocks=3)

    async def main() -> None:
        try:
            await devnet.setup()
        finally:
            await devnet.http.aclose()

    with pytest.raises(DnanetError) as info:
        asyncio.run(main())
    assert str(info.value) == (
        f"0 of 2 nodes registered in the --setup-blocks 3 blocks before genesis (block "
        f"{devnet.genesis}): run again with --setup-blocks 6, or see the nodes' logs in "
        f"{tmp_path}")
