"""Several starts of one run and the selection of the one that continues.

A new run with ``starts.count`` > 1 trains each start to the selection step in turn (same crop
pairs, other initial weights and centroids), then keeps the start whose hard labels separate
the *spectra* best (:func:`selection_score`, the k-means criterion on the inputs), as
k-means' ``n_init`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napari_dgc.errors import CheckpointError
from napari_dgc.metrics import calinski_harabasz
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import RunDirectory


def selected_start(scores: Sequence[float]) -> int:
    """The start that continues: the highest separation; starts that reached the same partition
    score the same up to rounding, and then the first of them wins.
    """
    best = max(scores)
    return next(start for start, value in enumerate(scores) if np.isclose(value, best, rtol=1e-9, atol=0.0))


def recorded_selection_score(run: RunDirectory, start: int, selection_step: int) -> float:
    """The score start ``start`` recorded in its checkpoint at the selection step."""
    for info in run.checkpoints(start):
        if info.step == selection_step and "selection_score" in info.stats:
            return float(info.stats["selection_score"])
    raise CheckpointError(f"{run.manifest_path}: start {start} has no selection score")


def selection_windows(sources: Sequence, count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` windows ``(h, w, bands)`` of at most ``size`` x ``size`` pixels at random
    positions of random cubes (seeded), on which :func:`selection_score` scores a model.
    """
    rng = np.random.default_rng([seed, 6])
    windows = []
    for _ in range(count):
        source = sources[int(rng.integers(len(sources)))]
        height, width = (min(size, extent) for extent in source.shape_hw)
        row = int(rng.integers(source.shape_hw[0] - height + 1))
        col = int(rng.integers(source.shape_hw[1] - width + 1))
        windows.append(source.read_window(slice(row, row + height), slice(col, col + width)))
    return windows


def window_predictions(model: DGCModel, windows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The model's hard labels ``(P,)`` of the windows' pixels and their normalised spectral
    inputs ``(P, L)`` (what the spectral stage reads), pixels of all windows in order.
    """
    device = model.centroids.device
    features, labels = [], []
    model.eval()
    with torch.no_grad():
        for window in windows:
            # A window of a memory-mapped cube is read-only; torch wants a writable array.
            pixels = torch.from_numpy(np.require(window, requirements=["C", "W"])).to(device)
            labels.append(model.predict(pixels.permute(2, 0, 1)[None]).reshape(-1).cpu().numpy())
            features.append(model.spectral_input(pixels.reshape(-1, pixels.shape[-1])).cpu().numpy())
    return np.concatenate(labels), np.concatenate(features)


def selection_score(model: DGCModel, windows: Sequence[np.ndarray]) -> float:
    """The *selection score* of a start: Calinski–Harabasz index of the model's hard labels of the
    windows' pixels on their normalised spectral inputs (what the spectral stage reads): how well
    the clusters separate the spectra, the k-means criterion on the inputs. Higher is better.

    Not comparable with the timeline's "spectral separation" (the same index on the review
    cubes' pixels): the index grows with the number of pixels, so each keeps its own name.
    """
    labels, features = window_predictions(model, windows)
    return calinski_harabasz(features, labels)
