"""The chain side of dnanet: Vyper contracts, their compiled artifacts, and (later) the client.

Contracts (``contracts/*.vy``, Vyper 0.4.3, compiled artifacts in ``artifacts/*.json``):

- ``DNAToken``: the ERC-20 $DNA; genesis supply at deployment, then only the distributor mints.
- ``MixerSet``: the mixer committee per epoch, the clock, and the EIP-712 domain anchor.
- ``NodeRegistry``: node stake, endpoint and hardware class; unbonding; quorum-signed
  jail/slash.
- ``RewardsDistributor``: quorum-signed epoch settlements, emission cap, Merkle claims.

Deployment order: MixerSet, DNAToken, RewardsDistributor(mixer_set, token, ...),
``token.set_minter(distributor)``, NodeRegistry(mixer_set, token, ...).
``dnanet.chain.artifacts`` loads the artifacts and regenerates them
(``python -m dnanet.chain.artifacts --write``).
"""
