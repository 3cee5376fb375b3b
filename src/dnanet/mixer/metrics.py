"""The mixer's Prometheus metrics (served on its app's /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dnanet.protocol.messages import Outcome

ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SETTLEMENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MixerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.challenges = Counter("dnanet_mixer_challenges", "challenges run", ["outcome"],
                                  registry=registry)
        for outcome in Outcome:
            self.challenges.labels(outcome.name.lower())
        self.session_faults = Counter(
            "dnanet_mixer_session_faults", "sessions that failed on the mixer's own side "
            "(no report made)", registry=registry)
        self.cosign = Counter("dnanet_mixer_cosign", "co-sign decisions", ["decision"],
                              registry=registry)
        self.cosign_round_trip = Histogram(
            "dnanet_mixer_cosign_round_trip_seconds", "asking one co-signer to sign a batch",
            buckets=ROUND_TRIP_BUCKETS, registry=registry)
        self.certified = Counter("dnanet_mixer_certified_batches", "batches certified",
                                 registry=registry)
        self.backup = Counter("dnanet_mixer_backup_forwards", "peers' batches this mixer "
                              "forwarded to the Validator in their originator's stead",
                              registry=registry)
        self.rounds_late = Counter("dnanet_mixer_rounds_late", "rounds challenged after they "
                                   "ended (the mixer was stopped or busy)", registry=registry)
        self.rounds_missed = Counter("dnanet_mixer_rounds_missed", "rounds never challenged "
                                     "(their epoch closed first)", registry=registry)
        self.settlements = Counter("dnanet_mixer_settlements", "settlement requests answered",
                                   ["decision"], registry=registry)
        self.settlement_seconds = Histogram(
            "dnanet_mixer_settlement_verify_seconds", "CPU time to verify an epoch's "
            "certificates and recompute its settlement", buckets=SETTLEMENT_BUCKETS,
            registry=registry)
        self.last_signed_epoch = Gauge("dnanet_mixer_last_signed_epoch",
                                       "the newest epoch whose settlement this mixer signed",
                                       registry=registry)


__all__ = ["MixerMetrics"]
