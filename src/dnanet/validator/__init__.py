"""The Validator: verifies quorum certificates, publishes each epoch's rollup, gathers the
mixers' signatures over it and settles it on chain (see ``docs/protocol.md``, Settlement)."""

from dnanet.validator.daemon import ValidatorDaemon, add_validator_commands
from dnanet.validator.settle import HttpSettlementSigner, SettlementLoop, SettlementSigner
from dnanet.validator.store import ValidatorStore

__all__ = [
    "HttpSettlementSigner",
    "SettlementLoop",
    "SettlementSigner",
    "ValidatorDaemon",
    "ValidatorStore",
    "add_validator_commands",
]
