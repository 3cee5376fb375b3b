"""The node registry as of any block, rebuilt from its events.

Every verifier checks a report against the registry at its round's first block (docs/protocol.md,
"Membership over time"). Reading contract state at an old block needs an archive node (anvil
keeps only recent states, a full node 128 blocks), but every change to a node's record emits
an event, and logs are kept for the whole chain. So ``RegistryHistory`` reads the registry's
events once, then only the new ones, and answers "the registry at block B" by applying the
events of blocks up to B, in order, to an empty registry: the contract's own transitions,
written once more in Python (``apply_event``), and checked against the contract's state at
each block by the tests (``tests/test_chain_registry.py``).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dnanet.errors import ChainError

REGISTRY_EVENTS = ("NodeRegistered", "NodeUpdated", "StakeAdded", "Unbonding", "Withdrawn",
                   "Punished", "Unjailed")
"""Every event of NodeRegistry that changes a node's record."""
KEEP_SNAPSHOTS = 64


@dataclass(frozen=True)
class RegistryEvent:
    """One decoded NodeRegistry event, where it happened."""

    block: int
    log_index: int
    name: str
    node: str
    args: dict[str, Any]


@dataclass(frozen=True)
class RegistryEntry:
    """A node's record as the registry holds it."""

    address: str
    endpoint: str = ""
    hw_class: int = 0
    stake: int = 0
    jailed: bool = False
    unbonding: bool = False
    unbond_epoch: int = 0
    registered: bool = False

    def is_active(self, min_stake: int) -> bool:
        """``NodeRegistry._is_active``: registered, not unbonding, not jailed, enough stake."""
        return (self.registered and not self.unbonding and not self.jailed
                and self.stake >= min_stake)


def apply_event(entry: RegistryEntry, event: RegistryEvent) -> RegistryEntry:
    """The record after ``event``, as the contract's function that emitted it leaves it."""
    a = event.args
    if event.name == "NodeRegistered":
        return replace(entry, endpoint=a["endpoint"], hw_class=a["hw_class"], stake=a["stake"],
                       unbonding=False, unbond_epoch=0, registered=True)
    if event.name == "NodeUpdated":
        return replace(entry, endpoint=a["endpoint"], hw_class=a["hw_class"])
    if event.name == "StakeAdded":
        return replace(entry, stake=a["stake"])
    if event.name == "Unbonding":
        return replace(entry, unbonding=True, unbond_epoch=a["epoch"])
    if event.name == "Withdrawn":  # everything goes but the jail mark (and the listing)
        return RegistryEntry(address=entry.address, jailed=entry.jailed)
    if event.name == "Punished":
        return replace(entry, stake=entry.stake - a["slashed"],
                       jailed=entry.jailed or bool(a["jail"]))
    if event.name == "Unjailed":
        return replace(entry, jailed=False)
    raise ChainError(f"unknown registry event {event.name}")


def compute_registry(events: Sequence[RegistryEvent]) -> list[RegistryEntry]:
    """The registry after ``events`` (in chain order): every node ever registered, in
    registration order."""
    entries: dict[str, RegistryEntry] = {}
    for event in events:
        entry = entries.get(event.node) or RegistryEntry(address=event.node)
        entries[event.node] = apply_event(entry, event)
    return list(entries.values())


EventReader = Callable[[int, int], list[RegistryEvent]]
"""(from block, to block) -> the registry's events in that range, in chain order."""


class RegistryHistory:
    """The registry at any block up to the head, from its events (thread-safe)."""

    def __init__(self, read_events: EventReader, first_block: int,
                 head: Callable[[], int]) -> None:
        self.read_events = read_events
        self.head = head
        self._lock = threading.Lock()
        self._events: list[RegistryEvent] = []
        self._blocks: list[int] = []
        self._read_to = first_block - 1
        """The last block whose events are read."""
        self._snapshots: dict[int, dict[str, RegistryEntry]] = {}
        """Registries after the first ``count`` events, by count (dicts keep registration
        order: a node's first event is its registration)."""

    def _read_until(self, block: int) -> None:
        if block <= self._read_to:
            return
        head = self.head()
        if block > head:
            raise ChainError(f"the registry at block {block} is not known yet (head {head})")
        new = self.read_events(self._read_to + 1, block)
        self._events.extend(new)
        self._blocks.extend(e.block for e in new)
        self._read_to = block

    def changed_at(self, block: int) -> int:
        """The block of the latest change at or before ``block`` (0 if none)."""
        with self._lock:
            self._read_until(block)
            i = bisect.bisect_right(self._blocks, block)
            return self._blocks[i - 1] if i else 0

    def at(self, block: int) -> list[RegistryEntry]:
        """The registry as of ``block`` (after its transactions): from the nearest earlier
        snapshot, the events since applied in order."""
        with self._lock:
            self._read_until(block)
            count = bisect.bisect_right(self._blocks, block)
            cached = self._snapshots.get(count)
            if cached is None:
                start = max((c for c in self._snapshots if c <= count), default=0)
                entries = dict(self._snapshots.get(start, {}))
                for event in self._events[start:count]:
                    entries[event.node] = apply_event(
                        entries.get(event.node) or RegistryEntry(address=event.node), event)
                cached = self._snapshots[count] = entries
                while len(self._snapshots) > KEEP_SNAPSHOTS:
                    del self._snapshots[min(self._snapshots)]
            return list(cached.values())


__all__ = [
    "REGISTRY_EVENTS",
    "RegistryEntry",
    "RegistryEvent",
    "RegistryHistory",
    "apply_event",
    "compute_registry",
]
