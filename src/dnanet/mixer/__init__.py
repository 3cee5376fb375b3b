"""The QueryMixer: challenges nodes, scores and co-signs reports, gathers quorums."""
