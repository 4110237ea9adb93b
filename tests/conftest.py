"""Test configuration: deterministic hypothesis profiles and shared helpers.

The ``ci`` profile (the default) is derandomized, has no deadline and a
bounded number of examples, so every run explores the same cases. Set
``HYPOTHESIS_PROFILE=explore`` locally to search more widely.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
settings.register_profile("explore", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two threads match the machines CI runs on and keep float reductions repeatable.
torch.set_num_threads(min(2, torch.get_num_threads()))
