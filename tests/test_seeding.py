"""Seeding: the steps seed what the models use, never the generator that ids are drawn from."""

from __future__ import annotations

import random
import subprocess
import sys

from llmflow import PROJECT_ROOT
from llmflow.tracking.runs import seed_everything

# What OpenTelemetry's RandomIdGenerator does for a trace id (MLflow's traces): 128 bits of Python's global random.
DRAW_AN_ID = (
    "import random; from llmflow.tracking.runs import seed_everything; seed_everything(); "
    "print(random.getrandbits(128))"
)


def test_seeding_leaves_pythons_global_random_alone():
    random.seed()
    state = random.getstate()
    seed_everything()
    assert random.getstate() == state


def test_two_steps_draw_different_ids():
    """Each step is a process of its own; with a constant seed of ``random`` both drew the same trace ids."""
    ids = {
        subprocess.run(
            [sys.executable, "-c", DRAW_AN_ID], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2, ids


def test_seeding_still_fixes_numpy_and_torch():
    import numpy
    import torch

    seed_everything()
    first = (numpy.random.rand(), torch.rand(1).item())
    seed_everything()
    assert (numpy.random.rand(), torch.rand(1).item()) == first
