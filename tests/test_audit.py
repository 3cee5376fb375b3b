"""``dnanet audit``: an honest epoch audits clean; each kind of tampering is named."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from dnanet.audit import AuditResult, PublishedEpoch, add_audit_command, audit_epoch
from dnanet.protocol.epoch import process_epochs
from dnanet.protocol.messages import QuorumCertificate
from dnanet.validator.daemon import ValidatorDaemon
from dnanet.validator.settle import Backoff
from validator_helpers import (
    Committee,
    Corpus,
    FakeGateway,
    LocalSigner,
    build_network,
    last_round_start,
    make_corpus,
    post_all,
    run,
    settle_block,
    with_validator,
)

CHEATER = 3


def _network() -> tuple[FakeGateway, Committee]:
    return build_network(mixers=4, nodes=5, cheaters=[CHEATER], label="audit")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(_network()[1], 2)


@pytest.fixture
def gateway() -> FakeGateway:
    gw, _ = _network()
    gw.advance_to(last_round_start(gw, 0))
    return gw


async def settle_two_epochs(gw: FakeGateway, daemon: ValidatorDaemon,
                            client: httpx.AsyncClient, corpus: Corpus) -> None:
    daemon.loop.signer = LocalSigner(gw, daemon.store.certificates)
    daemon.loop.backoff = Backoff(base_s=0.0)
    await post_all(client, corpus.certificates[0])
    gw.advance_to(last_round_start(gw, 1))
    await post_all(client, corpus.certificates[1])
    gw.advance_to(settle_block(gw, 1))
    await daemon.loop.step()
    await daemon.loop.step()
    assert gw.next_epoch == 2


def audited(gw: FakeGateway, tmp_path: Path, corpus: Corpus, epoch: int,
            prepare: Any = None, **kwargs: Any) -> AuditResult:
    """Settle epochs 0 and 1, let ``prepare`` tamper, then audit ``epoch``; ``source`` in
    kwargs replaces the Validator's URL."""

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> AuditResult:
        await settle_two_epochs(gw, daemon, client, corpus)
        if prepare is not None:
            prepare(daemon)
        source = kwargs.pop("source", daemon.url)
        if callable(source) and not isinstance(source, str):
            source = source(daemon)
            kwargs.setdefault("fetch_published", _published_from(daemon))
        return await audit_epoch(gw, source, epoch, **kwargs)

    return run(with_validator(gw, tmp_path, body))


def _published_from(daemon: ValidatorDaemon) -> Any:
    def fetch(epoch: int) -> PublishedEpoch | None:
        settlement = daemon.store.settlement(epoch)
        if settlement is None:
            return None
        return PublishedEpoch(settlement, tuple(p.punishment for p in
                                                daemon.store.punishments(epoch)))
    return fetch


def test_honest_epoch_audits_clean(gateway: FakeGateway, corpus: Corpus, tmp_path: Path) -> None:
    result = audited(gateway, tmp_path, corpus, 1)
    assert result.ok and result.exit_code == 0, result.render()
    expected = process_epochs([corpus.reports(0), corpus.reports(1)], gateway.preset)[1]
    assert result.computed == expected.settlement
    assert result.published is not None and result.published.settlement == expected.settlement
    assert result.chain is not None and result.chain.rewards_root == expected.settlement.rewards_root
    assert result.certificates == len(corpus.certificates[0]) + len(corpus.certificates[1])
    assert result.reports == len(expected.reports)
    # The cheater was jailed at epoch 0's settlement; its earlier reports still verify.
    cheater = gateway.nodes_list[CHEATER]
    assert not cheater.active
    assert "OK" in result.render()


def test_audit_from_a_certificate_function(gateway: FakeGateway, corpus: Corpus,
                                           tmp_path: Path) -> None:
    result = audited(gateway, tmp_path, corpus, 0,
                     source=lambda daemon: daemon.store.certificates)
    assert result.ok, result.render()


def test_a_different_chain_root_is_a_mismatch(gateway: FakeGateway, corpus: Corpus,
                                              tmp_path: Path) -> None:
    def tamper(daemon: ValidatorDaemon) -> None:
        real = gateway.settled[1]
        gateway.settled[1] = dataclasses.replace(real, rewards_root=b"\x42" * 32,
                                                 total=real.total - 1)

    result = audited(gateway, tmp_path, corpus, 1, tamper)
    assert result.exit_code == 1 and not result.ok
    assert any("chain settled 0x4242" in m for m in result.mismatches), result.mismatches
    assert any(m.startswith("total:") and "chain" in m for m in result.mismatches)
    assert "MISMATCH" in result.render()


def test_a_withheld_certificate_is_a_mismatch(gateway: FakeGateway, corpus: Corpus,
                                              tmp_path: Path) -> None:
    def withholding(daemon: ValidatorDaemon) -> Any:
        return lambda epoch: daemon.store.certificates(epoch)[1:]

    result = audited(gateway, tmp_path, corpus, 1, source=withholding)
    assert result.exit_code == 1
    assert any(m.startswith("reports digest") for m in result.mismatches), result.mismatches


def test_an_invalid_published_certificate_is_named(gateway: FakeGateway, corpus: Corpus,
                                                   tmp_path: Path) -> None:
    def forging(daemon: ValidatorDaemon) -> Any:
        def fetch(epoch: int) -> list[QuorumCertificate]:
            certificates = daemon.store.certificates(epoch)
            if epoch == 0:
                first = certificates[0]
                certificates[0] = dataclasses.replace(
                    first, signatures=first.signatures[:1] * 3)
            return certificates
        return fetch

    result = audited(gateway, tmp_path, corpus, 1, source=forging)
    assert result.exit_code == 1
    assert any("invalid certificate" in m and "epoch 0 certificate 0" in m
               for m in result.mismatches), result.mismatches


def test_unsettled_epoch_and_unreachable_validator_are_errors(
        gateway: FakeGateway, corpus: Corpus, tmp_path: Path) -> None:
    result = audited(gateway, tmp_path, corpus, 2)
    assert result.exit_code == 2 and not result.mismatches
    assert any("not settled on chain" in e for e in result.errors), result.errors

    async def unreachable() -> AuditResult:
        return await audit_epoch(gateway, "http://127.0.0.1:9", 0)

    down = run(unreachable())
    assert down.exit_code == 2 and "cannot reach the validator" in down.errors[0]


def test_audit_command_line(gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="dnanet")
    add_audit_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["audit", "--epoch", "-1", "--validator", "x", "--deployment", "d"])
    args = parser.parse_args(["audit", "--epoch", "0", "--validator", "http://127.0.0.1:9",
                              "--deployment", "net.json", "--json"])
    import dnanet.service.gateway

    monkeypatch.setattr(dnanet.service.gateway, "open_gateway", lambda *a: gateway)
    assert args.handler(args) == 2
    assert '"ok": false' in capsys.readouterr().out
