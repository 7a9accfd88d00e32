"""Helpers shared by the training-panel, timeline and checkpoint-review tests."""

from __future__ import annotations

from dataclasses import replace

import napari
import numpy as np

from napari_dgc._sample_data import scene_layer_data
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene

N_CLUSTERS = 3
N_BANDS = 16


def configured(base: TrainConfig | None = None, **settings) -> TrainConfig:
    """``base`` (default: the defaults) with ``settings``: top-level names, ``model=ModelConfig``
    or ``group__name`` for a grouped setting (``starts__count=2`` is ``starts.count``)."""
    base = TrainConfig() if base is None else base
    model = settings.pop("model", None)
    if model is not None:
        base = replace(base, model=model)
    return base.with_settings({key.replace("__", "."): value for key, value in settings.items()})


def tiny_config(**overrides) -> TrainConfig:
    """A training that takes a second or two on one CPU thread (one start unless
    ``starts__count`` is given); ``overrides`` as in :func:`configured`."""
    settings = dict(
        model=ModelConfig(n_clusters=N_CLUSTERS),
        starts__count=1,
        steps=6,
        checkpoint_every=2,
        data__crop_size=16,
        data__batch_size=1,
        device="cpu",
        seed=3,
    )
    settings.update(overrides)
    return configured(**settings)


def tiny_cube(rows: int = 32, cols: int = 32, seed: int = 1) -> np.ndarray:
    """A band-last synthetic leaf cube with :data:`N_BANDS` bands."""
    return make_leaf_scene(rows, cols, N_BANDS, seed=seed).cube


def add_cube_layer(
    viewer: napari.Viewer, name: str = "leaf", *, rows: int = 32, cols: int = 32, seed: int = 1
):
    """Add a synthetic cube the way the sample-data command does; return the cube layer."""
    scene = make_leaf_scene(rows, cols, N_BANDS, seed=seed)
    cube_tuple = scene_layer_data(scene, name)[0]
    return viewer.add_layer(napari.layers.Layer.create(*cube_tuple))
