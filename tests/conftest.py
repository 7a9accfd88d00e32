"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os

# Keep torch from oversubscribing the 2-core CI machine; set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so tests are reproducible."""
    return np.random.default_rng(1234)
