"""Protocol parameters, gathered in presets.

A preset is data: every constant of the protocol that a deployment may choose lives here, and
nowhere else. ``mainnet`` and ``local`` share the 1024-block epoch of the design (``local`` runs
on a fast block clock); ``test`` is small and exists only to keep tests quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnanet.errors import ConfigError

WEI_PER_DNA = 10**18
MAX_COMPUTE_ATTEMPTS = 8
"""The most timed attempts one compute step may ask for (a node holds each until it signs)."""
SCORE_ONE = 1_000_000
"""Fixed-point one for scores: a sub-score or a challenge score lies in [0, SCORE_ONE]."""
BPS_ONE = 10_000


@dataclass(frozen=True)
class ChallengeSizes:
    """How much work one challenge asks of a node of a given hardware class.

    Each timed step is sized so that the session's round trip, which the mixer removes from
    it, is small beside it (docs/scoring.md, "Measurement"): the compute product takes tens of
    milliseconds or more, a transfer several round trips of a slow link.
    """

    compute_n: int
    """``B`` is ``n`` x ``n``; ``A`` is ``compute_rows`` x ``n`` (even, see challenges.compute)."""
    compute_rows: int
    compute_checks: int
    """Rows of the product the mixer opens and checks."""
    download_bytes: int
    upload_bytes: int
    latency_echoes: int
    """Echoes timed for the latency figure (their minimum counts): 16 or more."""
    compute_attempts: int = 1
    """Timed products in one compute step, each of a seed of its own revealed at its start;
    the fastest counts and its rows are checked (as the fastest echo counts for latency)."""

    def __post_init__(self) -> None:
        if self.compute_n < 2 or self.compute_n % 2 or not 1 <= self.compute_checks \
                <= self.compute_rows:
            raise ConfigError(f"invalid compute size n={self.compute_n}, rows="
                              f"{self.compute_rows}, checks={self.compute_checks}")
        if min(self.download_bytes, self.upload_bytes, self.latency_echoes) < 1:
            raise ConfigError("transfer sizes and the echo count must be positive")
        if not 1 <= self.compute_attempts <= MAX_COMPUTE_ATTEMPTS:
            raise ConfigError(f"compute_attempts must be in [1, {MAX_COMPUTE_ATTEMPTS}], got "
                              f"{self.compute_attempts}")


@dataclass(frozen=True)
class ScoringParams:
    """The ends of each sub-score's logarithmic scale, and the weights of the sum (in bps).

    Each range runs from what is barely useful to what the best real hardware reaches, so that
    every tenfold step inside it moves a sub-score by the same amount (see docs/scoring.md):
    latency over 9 doublings, bandwidth over 10.3, compute over 19.9.
    """

    latency_best_us: int = 1_000
    """An RTT at or under 1 ms (a mixer in the same metro or datacenter) scores SCORE_ONE on
    latency: below it the difference is noise for any AI request."""
    latency_worst_us: int = 512_000
    """An RTT at or over 512 ms (a geostationary satellite link, ~600 ms) scores 0. A
    transatlantic 80 ms scores 0.30; 20 vs 200 ms RTT differ by 0.37."""
    compute_floor_flops: int = 10**9
    """1 GFLOP/s (one old core without SIMD) scores 0 on compute. A laptop CPU's float32
    matmul (50-500 GFLOP/s; this project's 2-vCPU build host measures ~50) lies at 0.28-0.45."""
    compute_ceiling_flops: int = 10**15
    """1 PFLOP/s scores SCORE_ONE: an NVIDIA H100 SXM's dense FP16/BF16 tensor-core peak is
    989 TFLOP/s. 2 vs 20 GFLOP/s differ by 0.17 of the compute sub-score."""
    bandwidth_floor_bps: int = 10**6
    """1 MB/s (8 Mbit/s, the upload of a slow home line) scores 0 on bandwidth."""
    bandwidth_ceiling_bps: int = 1_250_000_000
    """1.25 GB/s (10 Gbit/s, a datacenter host's NIC) scores SCORE_ONE. Home fibre at 1 Gbit/s
    (125 MB/s) lies at 0.68; 2 vs 20 MB/s differ by 0.32 of the bandwidth sub-score."""
    weight_compute_bps: int = 5_000
    weight_bandwidth_bps: int = 2_500
    weight_latency_bps: int = 2_500

    def __post_init__(self) -> None:
        total = self.weight_compute_bps + self.weight_bandwidth_bps + self.weight_latency_bps
        if total != BPS_ONE:
            raise ConfigError(f"scoring weights must add up to {BPS_ONE} bps, got {total}")
        for low_name, high_name in (("latency_best_us", "latency_worst_us"),
                                    ("compute_floor_flops", "compute_ceiling_flops"),
                                    ("bandwidth_floor_bps", "bandwidth_ceiling_bps")):
            low, high = getattr(self, low_name), getattr(self, high_name)
            if low <= 0:
                raise ConfigError(f"must be positive, got {low}", field=low_name)
            if high <= low:
                raise ConfigError(f"must lie above {low_name} ({low}), got {high}",
                                  field=high_name)


@dataclass(frozen=True)
class Preset:
    """All protocol parameters of one network."""

    name: str
    epoch_blocks: int
    round_blocks: int
    block_interval_ms: int
    """Target time between blocks; only the devnet's block clock uses it."""
    settlement_grace_blocks: int
    challenges_per_round: int
    """Expected challenges per node per round across the whole committee."""
    hardware_classes: tuple[ChallengeSizes, ...]
    """Challenge sizes indexed by a node's declared hardware class."""
    challenge_timeout_ms: int
    initial_emission: int
    """Wei minted for epoch 0; halves every ``halving_epochs``."""
    halving_epochs: int
    min_stake: int
    unbond_epochs: int
    strike_fail_numerator: int = 1
    strike_fail_denominator: int = 3
    """A node failing more than this fraction of its epoch's challenges earns nothing and gets
    a strike."""
    strikes_to_punish: int = 3
    """This many strikes within ``strike_window_epochs`` lead to a punishment."""
    strike_window_epochs: int = 8
    strike_slash_bps: int = 500
    canary_slash_bps: int = 1_000
    """A node whose canary answers more than ``f`` of the epoch's challengers found wrong (so
    at least one honest mixer did) is jailed and slashed this much at once: it served a model
    other than the one it advertises (docs/scoring.md, "Punishments")."""
    fraud_slash_bps: int = 5_000
    scoring: ScoringParams = field(default_factory=ScoringParams)

    def __post_init__(self) -> None:
        if self.epoch_blocks <= 0 or self.round_blocks <= 0:
            raise ConfigError("epoch_blocks and round_blocks must be positive")
        if self.epoch_blocks % self.round_blocks:
            raise ConfigError("epoch_blocks must be a multiple of round_blocks")
        if not self.hardware_classes:
            raise ConfigError("a preset needs at least one hardware class")

    @property
    def rounds_per_epoch(self) -> int:
        return self.epoch_blocks // self.round_blocks

    def epoch_emission(self, epoch: int) -> int:
        """Wei minted for ``epoch``: ``initial_emission >> (epoch // halving_epochs)``."""
        return self.initial_emission >> (epoch // self.halving_epochs)

    def sizes_for_class(self, hardware_class: int) -> ChallengeSizes:
        if not 0 <= hardware_class < len(self.hardware_classes):
            raise ConfigError(
                f"unknown hardware class {hardware_class} (preset {self.name} has "
                f"{len(self.hardware_classes)})",
                field="hardwareClass",
            )
        return self.hardware_classes[hardware_class]


def format_dna(wei: int) -> str:
    """Wei as DNA, exactly (no float): ``1.5 DNA``."""
    whole, frac = divmod(int(wei), WEI_PER_DNA)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return f"{text} DNA"


def format_dna_short(wei: int) -> str:
    """Wei as DNA for tables and pages: two decimals, rounded down, thousands separated
    (``1,624.08``); ``format_dna`` gives the exact amount. The devnet's table and the
    Validator's dashboard both print amounts with it."""
    whole, frac = divmod(int(wei), WEI_PER_DNA)
    return f"{whole:,}.{frac * 100 // WEI_PER_DNA:02d}"


def format_score(value: int) -> str:
    """A fixed-point score (``SCORE_ONE`` = 1) with its six decimals: ``0.734000``."""
    whole, frac = divmod(int(value), SCORE_ONE)
    return f"{whole}.{frac:06d}"


HARDWARE_CLASS_NAMES = ("cpu", "gpu")


def hardware_class_name(hardware_class: int) -> str:
    """``cpu`` or ``gpu``; the number itself for a class this release does not name."""
    if 0 <= hardware_class < len(HARDWARE_CLASS_NAMES):
        return HARDWARE_CLASS_NAMES[hardware_class]
    return str(hardware_class)


# Sizes per hardware class. Mainnet: a CPU product of ~69 GFLOP (0.5-2 s on a desktop CPU), a
# GPU one 16x that; transfers of 8 and 32 MiB, so that a 50 ms round trip is under a tenth of
# a transfer at 10 MB/s (CPU class) and a 10 ms one at 300 MB/s (GPU class).
_CPU = ChallengeSizes(
    compute_n=2048, compute_rows=8192, compute_checks=32,
    download_bytes=8 * 1024 * 1024, upload_bytes=8 * 1024 * 1024, latency_echoes=16,
    compute_attempts=3,
)
_GPU = ChallengeSizes(
    compute_n=4096, compute_rows=32768, compute_checks=32,
    download_bytes=32 * 1024 * 1024, upload_bytes=32 * 1024 * 1024, latency_echoes=16,
    compute_attempts=3,
)
# Local: 2.1 GFLOP (about 60 ms of float32 matmul on one core of this project's 2-vCPU build
# host, bench/compute.py), and 2 MiB each way: ~100 ms at 20 MB/s, ~1 s at 2 MB/s.
_LOCAL_CPU = ChallengeSizes(
    compute_n=1024, compute_rows=1024, compute_checks=16,
    download_bytes=2 * 1024 * 1024, upload_bytes=2 * 1024 * 1024, latency_echoes=16,
    compute_attempts=3,
)
_TINY = ChallengeSizes(
    compute_n=32, compute_rows=64, compute_checks=8,
    download_bytes=4096, upload_bytes=4096, latency_echoes=16,
    compute_attempts=2,
)

MAINNET = Preset(
    name="mainnet",
    epoch_blocks=1024,
    round_blocks=64,
    block_interval_ms=12_000,
    settlement_grace_blocks=64,
    challenges_per_round=1,
    hardware_classes=(_CPU, _GPU),
    challenge_timeout_ms=30_000,
    initial_emission=100_000 * WEI_PER_DNA,
    halving_epochs=2**14,
    min_stake=1_000 * WEI_PER_DNA,
    unbond_epochs=7,
)

LOCAL = Preset(
    name="local",
    epoch_blocks=1024,
    round_blocks=64,
    block_interval_ms=50,
    # Four rounds (12.8 s): the last round's challenges start up to half a round in and may
    # wait out the 10 s timeout; their batches are co-signed before the epoch closes.
    settlement_grace_blocks=256,
    challenges_per_round=1,
    hardware_classes=(_LOCAL_CPU, _LOCAL_CPU),
    # A node 200 ms of round trip away spends 3.2 s on its 16 echoes alone: the timeout
    # leaves it room for the transfers and the product (shaped devnets, bench/fidelity.py).
    challenge_timeout_ms=10_000,
    initial_emission=10_000 * WEI_PER_DNA,
    halving_epochs=2**14,
    min_stake=100 * WEI_PER_DNA,
    unbond_epochs=1,
    # The same real-world scales as mainnet: the devnet's shaped links (``--shape``) stand in
    # for real ones, and scores on one machine stay comparable with a real network's.
)

TEST = Preset(
    name="test",
    epoch_blocks=32,
    round_blocks=8,
    block_interval_ms=10,
    settlement_grace_blocks=2,
    challenges_per_round=1,
    hardware_classes=(_TINY, _TINY),
    challenge_timeout_ms=2_000,
    initial_emission=1_000 * WEI_PER_DNA,
    halving_epochs=100,
    min_stake=10 * WEI_PER_DNA,
    unbond_epochs=1,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (MAINNET, LOCAL, TEST)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


__all__ = [
    "BPS_ONE",
    "HARDWARE_CLASS_NAMES",
    "LOCAL",
    "MAINNET",
    "PRESETS",
    "SCORE_ONE",
    "TEST",
    "WEI_PER_DNA",
    "ChallengeSizes",
    "Preset",
    "ScoringParams",
    "format_dna",
    "format_dna_short",
    "format_score",
    "get_preset",
    "hardware_class_name",
]
