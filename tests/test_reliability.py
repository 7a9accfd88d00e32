"""The reliability harness (benchmarks/reliability.py) in its short form: 5 kills, 2 races, a full disk.

The full figures (30 kills, 20 concurrent-writer trials) are in docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"


def _harness():
    sys.path.insert(0, str(HARNESS.parent))
    spec = importlib.util.spec_from_file_location("reliability", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kills_races_and_a_full_disk_lose_nothing(tmp_path):
    counts = _harness().run_harness(kills=5, concurrent=2, disk=True, seed=1, work=tmp_path)
    assert counts.problems == []
    assert counts.trials >= 7  # the kills and races really ran (the disk trial needs root)
    assert counts.unloadable_checkpoints == counts.failed_resumes == counts.weight_mismatches == 0
