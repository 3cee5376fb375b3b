"""The command line's argument types: each refuses a bad value naming the option, before a
keystore is read or anything starts; amounts of DNA are exact wei, never floats."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnanet import cliargs
from dnanet.cli import build_parser
from dnanet.params import WEI_PER_DNA


def refused(kind: object, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        kind(text)  # type: ignore[operator]
    return str(info.value)


def test_counts_ports_and_block_numbers() -> None:
    assert cliargs.positive_int("1") == 1 and cliargs.positive_int(" 42 ") == 42
    assert cliargs.non_negative_int("0") == 0
    assert (cliargs.port("0"), cliargs.port("65535")) == (0, 65535)
    assert refused(cliargs.positive_int, "0") == "must be at least 1, got 0"
    assert refused(cliargs.non_negative_int, "-1") == "must be 0 or more, got -1"
    assert refused(cliargs.port, "65536") == "a port is 0 to 65535, got 65536"
    assert refused(cliargs.port, "-1") == "a port is 0 to 65535, got -1"
    for bad in ("", "x", "1.5", "1e3", "0x10", "--1", "9" * 81):
        for kind in (cliargs.positive_int, cliargs.non_negative_int, cliargs.port):
            assert refused(kind, bad).startswith("not a whole number")


def test_seconds_and_fractions() -> None:
    assert cliargs.seconds("0") == 0.0 and cliargs.seconds("2.5") == 2.5
    assert cliargs.fraction("0") == 0.0 and cliargs.fraction("1") == 1.0
    assert refused(cliargs.seconds, "-0.1") == "must be 0 or more seconds, got -0.1"
    assert refused(cliargs.fraction, "1.01") == "a fraction is 0 to 1, got 1.01"
    for bad in ("nan", "inf", "-inf", "x", ""):
        assert refused(cliargs.seconds, bad).startswith("not a finite number")
        assert refused(cliargs.fraction, bad).startswith("not a finite number")


def test_amounts_of_dna_are_exact_wei() -> None:
    assert cliargs.dna_amount("100") == 100 * WEI_PER_DNA
    # The float product would be 100099999999999991611392.
    assert cliargs.dna_amount("100.1") == 100_100_000_000_000_000_000
    assert cliargs.dna_amount("0.000000000000000001") == 1
    assert cliargs.dna_amount("123456789012.123456789012345678") == \
        123456789012_123456789012345678
    assert refused(cliargs.dna_amount, "0.0000000000000000001") == \
        "0.0000000000000000001 DNA is finer than 1 wei (10^-18 DNA)"
    for bad in ("0", "-5", "0.0"):
        assert refused(cliargs.dna_amount, bad).startswith("must be a positive amount")
    for bad in ("x", "", "1,5", "9" * 81):
        assert refused(cliargs.dna_amount, bad).startswith("not an amount of DNA")
    for bad in ("nan", "inf", "Infinity"):
        assert refused(cliargs.dna_amount, bad).startswith("must be a positive amount")


@given(wei=st.integers(1, 10**40))
def test_an_amount_written_in_dna_reads_back_as_the_same_wei(wei: int) -> None:
    whole, frac = divmod(wei, WEI_PER_DNA)
    assert cliargs.dna_amount(f"{whole}.{frac:018d}") == wei


@pytest.mark.parametrize("argv", [
    ["devnet", "--epochs", "0"],
    ["devnet", "--nodes", "-2"],
    ["devnet", "--mixers", "x"],
    ["devnet", "--preset", "nope"],
    ["demo", "--nodes", "0"],
    ["validator", "run", "--data-dir", "d", "--deployment", "n", "--keystore", "k",
     "--port", "70000"],
    ["validator", "run", "--data-dir", "d", "--deployment", "n", "--keystore", "k",
     "--workers", "-3"],
    ["node", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir", "d",
     "--stake", "-5"],
    ["node", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir", "d",
     "--offline-at-block", "-1"],
    ["node", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir", "d",
     "--compute-threads", "0"],
    ["mixer", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir", "d",
     "--validator", "v", "--canary-rate", "7"],
    ["mixer", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir", "d",
     "--validator", "v", "--canary-interval", "nan"],
    ["audit", "--validator", "v", "--deployment", "n", "--epoch", "-1"],
])
def test_the_command_line_refuses_a_bad_number_naming_the_option(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    option = next(a for a in reversed(argv) if a.startswith("--"))
    assert f"argument {option}" in capsys.readouterr().err


def test_the_command_line_reads_the_stake_as_wei() -> None:
    args = build_parser().parse_args(
        ["node", "run", "--rpc", "r", "--deployment", "n", "--keystore", "k", "--data-dir",
         "d", "--stake", "250.5"])
    assert args.stake == 250_500_000_000_000_000_000
