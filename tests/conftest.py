"""Test-wide settings: property tests are deterministic.

Hypothesis draws its examples from a seed derived from each test (``derandomize``), so a run
on CI tries exactly what a run here tried, and a failure reproduces. To search further for
new counterexamples, run with ``HYPOTHESIS_PROFILE=explore`` (random seeds, more examples).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dnanet", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dnanet"))
