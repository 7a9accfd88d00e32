"""Tiled segmentation equals the whole-image pass, for arrays and memory-mapped cubes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgc.errors import ConfigError
from napari_dgc.io import open_cube
from napari_dgc.model import DGCModel, ModelConfig
from napari_dgc.segmentation import segment_array, segment_cube, tile_windows

N_BANDS = 20


@pytest.fixture(scope="module")
def model() -> DGCModel:
    torch.manual_seed(3)
    net = DGCModel(N_BANDS, ModelConfig(n_clusters=4))
    # Spread the random centroids over the embeddings the random net produces, so all
    # clusters occur and labels change often across the image (a demanding comparison).
    with torch.no_grad():
        z = net.embed(torch.rand(1, N_BANDS, 16, 16)).flatten(2)[0].T
        net.centroids.copy_(z[torch.randperm(z.shape[0])[:4]])
    return net.eval()


@pytest.fixture(scope="module")
def cube_array() -> np.ndarray:
    rng = np.random.default_rng(7)
    # Smooth structure plus noise, 70 x 90: not a multiple of the tile size.
    base = rng.random((7, 9, N_BANDS)).repeat(10, 0).repeat(10, 1)
    return (base + 0.3 * rng.random(base.shape)).astype(np.float32)


def test_whole_image_pass_equals_the_model(model, cube_array):
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True,
                         return_embeddings=True)
    x = torch.from_numpy(cube_array).permute(2, 0, 1)[None]
    with torch.no_grad():
        z, p = model(x)
    np.testing.assert_array_equal(whole.labels, model.predict(x)[0].numpy())
    np.testing.assert_allclose(whole.probabilities, p[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(whole.embeddings, z[0].numpy(), atol=1e-6)
    assert whole.labels.dtype == np.int32 and len(np.unique(whole.labels)) == 4


@pytest.mark.parametrize("tile", [32, 17])
def test_tiled_equals_whole(model, cube_array, tile):
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True,
                         return_embeddings=True)
    tiled = segment_cube(model, cube_array, tile=tile, return_probabilities=True,
                         return_embeddings=True)
    assert np.array_equal(tiled.labels, whole.labels)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_allclose(tiled.embeddings, whole.embeddings, atol=1e-5)


def test_halo_smaller_than_receptive_field_would_differ(model, cube_array, monkeypatch):
    """The equality above depends on the halo: without it the tile borders go wrong."""
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True)
    monkeypatch.setattr(DGCModel, "receptive_radius", property(lambda self: 1))
    short = segment_cube(model, cube_array, tile=32, return_probabilities=True)
    assert not np.allclose(short.probabilities, whole.probabilities, atol=1e-3)


def test_memory_mapped_cube_and_progress(model, cube_array, tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, cube_array)
    calls = []
    from_file = segment_cube(model, open_cube(path), tile=40,
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]  # 2 x 3 tiles of 40 px over 70 x 90
    np.testing.assert_array_equal(from_file.labels, segment_array(model, cube_array).labels)
    assert from_file.probabilities is None and from_file.embeddings is None


def test_tiles_partition_the_image():
    covered = np.zeros((70, 90), int)
    for rows, cols, inner_rows, inner_cols in tile_windows((70, 90), 32, 5):
        assert rows.start >= 0 and rows.stop <= 70 and cols.start >= 0 and cols.stop <= 90
        assert inner_rows.start <= 5 and inner_cols.start <= 5
        covered[rows, cols][inner_rows, inner_cols] += 1
    assert (covered == 1).all()


def test_model_mode_is_restored(model, cube_array):
    model.train()
    try:
        segment_cube(model, cube_array[:8, :8])
        assert model.training
    finally:
        model.eval()


def test_bad_input(model, cube_array):
    with pytest.raises(ConfigError, match="21 bands, the model was trained on 20"):
        segment_cube(model, np.zeros((8, 8, 21), np.float32))
    with pytest.raises(ConfigError, match="tile size must be a positive"):
        segment_cube(model, cube_array, tile=0)
    with pytest.raises(ConfigError, match=r"band-last .* got \(8, 8\)"):
        segment_array(model, np.zeros((8, 8), np.float32))
