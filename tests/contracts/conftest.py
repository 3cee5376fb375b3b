"""Fixtures of the contract tests: one network deployed per module, a fresh anchor per test."""

from __future__ import annotations

from collections.abc import Iterator

import boa
import pytest

from .helpers import Network, deploy_network, make_accounts


@pytest.fixture(scope="module")
def module_net() -> Iterator[Network]:
    with boa.env.anchor():
        yield deploy_network()


@pytest.fixture
def net(module_net: Network) -> Iterator[Network]:
    """The default network: 10 mixers from epoch 0, no treasury (slashes burn)."""
    with boa.env.anchor():
        yield module_net


@pytest.fixture(scope="module")
def nodes() -> list[str]:
    """Addresses of test nodes (deterministic)."""
    return [a.address for a in make_accounts(8, "node")]


@pytest.fixture(scope="module")
def outsiders() -> list[object]:
    """Accounts that belong to no mixer set."""
    return make_accounts(4, "outsider")
