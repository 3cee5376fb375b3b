"""The parts of the adversarial devnet by name, and what the design does about each (data).

``NODE_CHEATS`` are the node variants of ``dnanet.adversary.nodes``; ``CONTROL`` is an honest
node throttled like the ``echo-fast`` one, its twin for comparison. ``MIXER_BEHAVIOURS`` are
the values of ``dnanet.mixer.byzantine.Behaviour`` (kept here so that a scenario is checked
without importing the daemons). ``DETECTION`` says, per node cheat, whether the network can
tell it from honest work, what catches it, and how it is punished: the benchmark
(``bench/adversary.py``) prints it, and docs/protocol.md's threat model lists the same.
"""

from __future__ import annotations

from dataclasses import dataclass

NODE_CHEATS = ("lazy", "replayer", "gpu-liar", "relay", "swapper", "selective", "echo-fast")
CONTROL = "control"
"""An honest node with the echo-fast node's slow compute and slow link (``throttled``)."""
NODE_ROLES = (*NODE_CHEATS, CONTROL)
MIXER_BEHAVIOURS = ("inflate", "fabricate", "refuse-cosign", "equivocate",
                    "withhold-settlement")


@dataclass(frozen=True)
class Detection:
    """What the network does about one node cheat."""

    cheat: str
    detectable: bool
    """Whether a mixer can tell the cheat from honest work (and the rules make it earn 0)."""
    punishment: str | None
    """``fraud`` (jailed and slashed when the epoch settles), ``canaries`` (the same, once
    more than ``f`` mixers found its canary answers wrong in one epoch) or ``strikes`` (jailed
    and slashed after ``strikes_to_punish`` epochs with more than a third failed); None when
    it is not punished."""
    how: str
    """What catches it, or why nothing can."""


DETECTION: dict[str, Detection] = {d.cheat: d for d in (
    Detection("lazy", True, "fraud",
              "the mixer opens rows it picks after the node committed to the product; a node "
              "that computed a fraction f of the rows passes k checks with probability "
              "(1-f)^k, and a wrong row under its signed root is fraud evidence"),
    Detection("replayer", True, "fraud",
              "echo nonces, payloads and seeds are new in every session; a product committed "
              "for an earlier seed opens rows that are wrong for this one: fraud evidence"),
    Detection("gpu-liar", False, None,
              "no gain to detect: the declared class only sizes the challenges, the score "
              "comes from the measured rate; a CPU declaring GPU gets larger work at its CPU's "
              "rate (the local and test presets size both classes alike)"),
    Detection("relay", False, None,
              "two staked identities answering from one machine each do the work they are "
              "asked: the network pays per identity for what was measured when it was "
              "challenged, and a machine's challenges rarely overlap; each identity must "
              "stake, and overlapping sessions slow both"),
    Detection("swapper", True, "canaries",
              "canaries: known-answer requests compared with the mixer's own copy of the "
              "model (cosine 0.99); each wrong answer turns the mixer's next report of the "
              "node into CANARY_FAILED, and wrong answers found by more than f of the "
              "epoch's mixers (at least one honest) jail and slash it when the epoch settles"),
    Detection("selective", False, None,
              "canaries are told apart from users' requests: their texts come from public "
              "templates over a fixed word list (dnanet.gateway.canary), so a node answers "
              "them right and degrades the rest; a dropped request is never a canary verdict. "
              "Audits of users' own answers (audit_rate, 5%) catch the degraded ones they "
              "draw, each a failed canary that zeroes the auditing mixer's next report of it; "
              "found by more than f mixers in an epoch it is jailed, which takes users' "
              "traffic through many gateways: with a thin burst through one gateway it loses "
              "about one report an epoch and earns as an honest node does"),
    Detection("echo-fast", False, None,
              "echoes are timed on their own path; a light responder in front of a slow "
              "machine earns the latency sub-score of the responder's path (25% of the "
              "score); its compute and transfers are still timed through it, slower by "
              "what the echoes hid"),
)}


def is_detectable(role: str) -> bool:
    """Whether ``role`` is a cheat that the network catches (and makes earn nothing)."""
    detection = DETECTION.get(role)
    return detection is not None and detection.detectable


__all__ = ["CONTROL", "DETECTION", "MIXER_BEHAVIOURS", "NODE_CHEATS", "NODE_ROLES", "Detection",
           "is_detectable"]
