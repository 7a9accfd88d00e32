"""Helpers shared by the training-panel, timeline and checkpoint-review tests."""

from __future__ import annotations

import napari
import numpy as np

from napari_dgc._sample_data import scene_layer_data
from napari_dgc.model.network import ModelConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.training.loop import TrainConfig

N_CLUSTERS = 3
N_BANDS = 16


def tiny_config(**overrides) -> TrainConfig:
    """A training that takes a second or two on one CPU thread (one start unless
    ``restarts`` is given)."""
    settings = dict(
        model=ModelConfig(n_clusters=N_CLUSTERS),
        restarts=1,
        steps=6,
        checkpoint_every=2,
        crop_size=16,
        batch_size=1,
        device="cpu",
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_cube(rows: int = 32, cols: int = 32, seed: int = 1) -> np.ndarray:
    """A band-last synthetic leaf cube with :data:`N_BANDS` bands."""
    return make_leaf_scene(rows, cols, N_BANDS, seed=seed).cube


def add_cube_layer(viewer: napari.Viewer, name: str = "leaf", *, rows: int = 32, cols: int = 32, seed: int = 1):
    """Add a synthetic cube the way the sample-data command does; return the cube layer."""
    scene = make_leaf_scene(rows, cols, N_BANDS, seed=seed)
    cube_tuple = scene_layer_data(scene, name)[0]
    return viewer.add_layer(napari.layers.Layer.create(*cube_tuple))
