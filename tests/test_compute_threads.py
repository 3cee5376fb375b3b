"""A node's product on a share of the host's cores (``--compute-threads``; devnets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from dnanet.node import hardware
from dnanet.node.hardware import devnet_compute_threads, limit_compute_threads


@pytest.fixture
def restore_blas_threads() -> Iterator[None]:
    import numpy  # noqa: F401  (loads the BLAS)

    before = {i["internal_api"]: i["num_threads"] for i in threadpool_info()
              if i["user_api"] == "blas"}
    yield
    for api, threads in before.items():
        threadpool_limits(limits=threads, user_api="blas")
        assert api  # one BLAS or more, each back to its own count


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_the_limit_holds_for_the_process(restore_blas_threads: None) -> None:
    limit_compute_threads(1)
    assert _blas_threads() == {1}


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        limit_compute_threads(0)


@pytest.mark.parametrize(("cpus", "nodes", "threads"),
                         [(2, 12, 1), (16, 4, 4), (16, 12, 1), (8, 1, 8), (None, 3, 1)])
def test_each_devnet_node_gets_its_share_of_the_cores(
        monkeypatch: pytest.MonkeyPatch, cpus: int | None, nodes: int, threads: int) -> None:
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: cpus)
    assert devnet_compute_threads(nodes) == threads
