"""Where a dnanet network lives on its chain: the deployment file the daemons read.

A deployment file is a small JSON object::

    {"format": 1, "preset": "local", "chain_id": 31337,
     "contracts": {"DNAToken": "0x..", "MixerSet": "0x..", "NodeRegistry": "0x..",
                   "RewardsDistributor": "0x.."},
     "deploy_block": 1, "genesis_block": 8, "epoch_blocks": 1024}

`Deployment.load` rejects anything else with a `ConfigError` that names the file and the field.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnanet.errors import ConfigError

FORMAT_VERSION = 1
CONTRACT_NAMES = ("DNAToken", "MixerSet", "NodeRegistry", "RewardsDistributor")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}").fullmatch
_ZERO_ADDRESS = "0x" + "00" * 20
_KEYS = {"format", "preset", "chain_id", "contracts", "deploy_block", "genesis_block",
         "epoch_blocks"}


@dataclass(frozen=True)
class Deployment:
    """The addresses and clock of one dnanet network on one chain.

    Addresses are lower-case ``0x`` strings. ``genesis_block`` is the first block of epoch 0;
    ``deploy_block`` the block of the first deployment transaction (a lower bound for log scans).
    """

    chain_id: int
    token: str
    mixer_set: str
    registry: str
    distributor: str
    deploy_block: int
    genesis_block: int
    epoch_blocks: int
    preset: str

    def __post_init__(self) -> None:
        for name in ("chain_id", "deploy_block", "genesis_block", "epoch_blocks"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ConfigError(f"expected a non-negative integer, got {value!r}", field=name)
        if self.chain_id == 0:
            raise ConfigError("chain id 0 is not a chain", field="chain_id")
        if self.epoch_blocks == 0:
            raise ConfigError("an epoch has at least one block", field="epoch_blocks")
        if not isinstance(self.preset, str) or not self.preset:
            raise ConfigError("the preset name is missing", field="preset")
        seen: dict[str, str] = {}
        for name, address in self.addresses.items():
            if not isinstance(address, str) or _ADDRESS(address) is None:
                raise ConfigError(
                    f"{address!r} is not an address (0x followed by 40 hex digits)",
                    field=f"contracts.{name}",
                )
            if address.lower() == _ZERO_ADDRESS:
                raise ConfigError("the zero address is not a contract", field=f"contracts.{name}")
            if address.lower() in seen:
                raise ConfigError(
                    f"same address as {seen[address.lower()]}", field=f"contracts.{name}"
                )
            seen[address.lower()] = name
            object.__setattr__(self, _ATTRS[name], address.lower())

    @property
    def addresses(self) -> dict[str, str]:
        """Contract name -> address, in deployment order."""
        return {name: getattr(self, _ATTRS[name]) for name in CONTRACT_NAMES}

    def epoch_of_block(self, block: int) -> int:
        """The epoch containing ``block`` (0 before genesis, as MixerSet.current_epoch)."""
        if block < self.genesis_block:
            return 0
        return (block - self.genesis_block) // self.epoch_blocks

    def epoch_start(self, epoch: int) -> int:
        """The first block of ``epoch``."""
        return self.genesis_block + epoch * self.epoch_blocks

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "preset": self.preset,
            "chain_id": self.chain_id,
            "contracts": self.addresses,
            "deploy_block": self.deploy_block,
            "genesis_block": self.genesis_block,
            "epoch_blocks": self.epoch_blocks,
        }

    @classmethod
    def from_json(cls, data: Any) -> Deployment:
        """Parse a decoded deployment document; ConfigError names the first bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a deployment is a JSON object, got {type(data).__name__}")
        missing = sorted(_KEYS - set(data))
        if missing:
            raise ConfigError(f"missing key(s) {', '.join(missing)}", field=missing[0])
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}", field=unknown[0])
        if data["format"] != FORMAT_VERSION:
            raise ConfigError(
                f"unsupported deployment format {data['format']!r} (this dnanet reads "
                f"{FORMAT_VERSION})",
                field="format",
            )
        contracts = data["contracts"]
        if not isinstance(contracts, Mapping):
            raise ConfigError("expected an object of contract addresses", field="contracts")
        names = set(contracts)
        if names != set(CONTRACT_NAMES):
            wrong = sorted(names ^ set(CONTRACT_NAMES))
            raise ConfigError(
                f"expected exactly {', '.join(CONTRACT_NAMES)}; wrong or missing: "
                f"{', '.join(wrong)}",
                field="contracts",
            )
        return cls(
            chain_id=data["chain_id"],
            token=contracts["DNAToken"],
            mixer_set=contracts["MixerSet"],
            registry=contracts["NodeRegistry"],
            distributor=contracts["RewardsDistributor"],
            deploy_block=data["deploy_block"],
            genesis_block=data["genesis_block"],
            epoch_blocks=data["epoch_blocks"],
            preset=data["preset"],
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Deployment:
        """Read a deployment file; ConfigError says which file and what is wrong."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read deployment file {os.fspath(path)}: {exc.strerror or exc}"
                " (create one with `dnanet contracts deploy`)"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deployment file {os.fspath(path)} is not JSON: {exc}") from None
        try:
            return cls.from_json(data)
        except ConfigError as exc:
            raise ConfigError(f"deployment file {os.fspath(path)}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the deployment file atomically (a reader never sees half a file)."""
        target = Path(path)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, target)
        except OSError as exc:
            raise ConfigError(
                f"cannot write deployment file {os.fspath(path)}: {exc.strerror or exc}"
            ) from None


_ATTRS = {
    "DNAToken": "token",
    "MixerSet": "mixer_set",
    "NodeRegistry": "registry",
    "RewardsDistributor": "distributor",
}

__all__ = ["CONTRACT_NAMES", "FORMAT_VERSION", "Deployment"]
