"""Tiled segmentation equals the whole-image pass, for arrays and memory-mapped cubes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_dgc.config import ModelConfig
from napari_dgc.errors import ConfigError
from napari_dgc.inference import segmentation
from napari_dgc.inference.segmentation import (
    segment_array,
    segment_cube,
    spectral_input_fingerprint,
    tile_windows,
)
from napari_dgc.io import open_cube
from napari_dgc.model.network import DGCModel

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
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True, return_embeddings=True)
    x = torch.from_numpy(cube_array).permute(2, 0, 1)[None]
    with torch.no_grad():
        z, p = model(x)
    np.testing.assert_array_equal(whole.labels, model.predict(x)[0].numpy())
    np.testing.assert_allclose(whole.probabilities, p[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(whole.embeddings, z[0].numpy(), atol=1e-6)
    assert whole.labels.dtype == np.int32 and len(np.unique(whole.labels)) == 4


@pytest.mark.parametrize("tile", [32, 17])
def test_tiled_equals_whole(model, cube_array, tile):
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True, return_embeddings=True)
    tiled = segment_cube(model, cube_array, tile=tile, return_probabilities=True, return_embeddings=True)
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
    from_file = segment_cube(
        model, open_cube(path), tile=40, progress=lambda done, total: calls.append((done, total))
    )
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


@pytest.mark.parametrize("tile", [17, 32])
def test_parallel_tiles_equal_the_serial_pass(model, cube_array, tile):
    options = dict(tile=tile, return_probabilities=True, return_embeddings=True)
    serial = segment_cube(model, cube_array, workers=1, **options)
    calls = []
    parallel = segment_cube(
        model, cube_array, workers=3, progress=lambda done, total: calls.append((done, total)), **options
    )
    np.testing.assert_array_equal(parallel.labels, serial.labels)
    np.testing.assert_array_equal(parallel.probabilities, serial.probabilities)
    np.testing.assert_array_equal(parallel.embeddings, serial.embeddings)
    n_tiles = len(list(tile_windows(cube_array.shape[:2], tile, model.receptive_radius)))
    assert calls == [(i, n_tiles) for i in range(1, n_tiles + 1)]


class CountingCube:
    """A Cube stand-in over an array that records how many tiles were read but not reported."""

    def __init__(self, array: np.ndarray):
        self.array, self.path = array, "counting.npy"
        self.shape_hw, self.n_bands = array.shape[:2], array.shape[2]
        self.reads, self.reported, self.in_flight = 0, 0, []
        self.lock = threading.Lock()

    def read_window(self, rows: slice, cols: slice) -> np.ndarray:
        with self.lock:
            self.reads += 1
            self.in_flight.append(self.reads - self.reported)
        return np.ascontiguousarray(self.array[rows, cols])

    def progress(self, done: int, total: int) -> None:
        with self.lock:
            self.reported = done


def test_at_most_workers_tiles_in_flight(model, cube_array):
    cube = CountingCube(cube_array)
    result = segment_cube(model, cube, tile=16, workers=2, progress=cube.progress)
    assert cube.reads == 5 * 6 and max(cube.in_flight) <= 2
    np.testing.assert_array_equal(result.labels, segment_cube(model, cube_array, workers=1).labels)


def test_an_error_in_a_tile_reaches_the_caller(model, cube_array, monkeypatch):
    original, calls = DGCModel.assign, []

    def failing_assign(self, z):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("tile 3 failed")
        return original(self, z)

    monkeypatch.setattr(DGCModel, "assign", failing_assign)
    with pytest.raises(RuntimeError, match="tile 3 failed"):
        segment_cube(model, cube_array, tile=16, workers=2)
    assert len(calls) < 30  # the remaining tiles were not segmented


@pytest.fixture(scope="module")
def resampling_model() -> DGCModel:
    """A model whose spectral input resamples 20 bands to 8 bins, with brightness and band
    normalisation, so the spectral input differs from the raw cube."""
    torch.manual_seed(5)
    net = DGCModel(N_BANDS, ModelConfig(n_clusters=4, spectral_bands=8))
    rng = np.random.default_rng(1)
    net.set_normalization(rng.normal(1.0, 0.1, N_BANDS), rng.uniform(0.1, 0.3, N_BANDS), 1e-3)
    with torch.no_grad():
        z = net.embed(torch.rand(1, N_BANDS, 16, 16)).flatten(2)[0].T
        net.centroids.copy_(z[torch.randperm(z.shape[0])[:4]])
    return net.eval()


@pytest.mark.parametrize("tile, workers", [(1000, 1), (32, 1), (17, 2)])
def test_segmenting_the_spectral_input_equals_segmenting_the_cube(
    resampling_model, cube_array, tile, workers
):
    model = resampling_model
    whole = segment_cube(model, cube_array, tile=1000, return_probabilities=True, workers=1)
    first = segment_cube(model, cube_array, tile=tile, workers=workers, return_spectral_input=True)
    prepared = first.spectral_input
    assert prepared.values.shape == (70, 90, 8) and not prepared.values.flags.writeable
    with torch.no_grad():
        direct = model.spectral_input(torch.from_numpy(cube_array).reshape(-1, N_BANDS))
    np.testing.assert_allclose(prepared.values.reshape(-1, 8), direct.numpy(), atol=1e-5)
    np.testing.assert_array_equal(first.labels, whole.labels)

    again = segment_cube(model, prepared, tile=tile, workers=workers, return_probabilities=True)
    assert np.array_equal(again.labels, whole.labels)
    np.testing.assert_allclose(again.probabilities, whole.probabilities, atol=1e-5)
    assert again.spectral_input is None


def test_spectral_input_fingerprint(resampling_model, model):
    # Another checkpoint of the same run: other weights, same normalisation -> same input.
    other_weights = DGCModel(N_BANDS, resampling_model.config)
    other_weights.load_state_dict(resampling_model.state_dict())
    with torch.no_grad():
        other_weights.spectral_convs[0].weight.mul_(2.0)
    assert spectral_input_fingerprint(other_weights) == spectral_input_fingerprint(resampling_model)
    other_scale = DGCModel(N_BANDS, resampling_model.config)
    other_scale.load_state_dict(resampling_model.state_dict())
    other_scale.set_normalization(other_scale.band_offset, other_scale.band_scale * 1.001)
    assert spectral_input_fingerprint(other_scale) != spectral_input_fingerprint(resampling_model)
    assert spectral_input_fingerprint(model) != spectral_input_fingerprint(resampling_model)


def test_spectral_input_of_another_normalisation_is_refused(resampling_model, model, cube_array):
    prepared = segment_cube(resampling_model, cube_array[:20, :20], return_spectral_input=True).spectral_input
    with pytest.raises(ConfigError, match="another normalisation"):
        segment_cube(model, prepared)
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        segment_cube(model, cube_array, workers=0)


def test_tiles_go_to_the_models_device_and_another_device_is_refused(model, cube_array):
    default = segment_cube(model, cube_array[:20, :20]).labels
    np.testing.assert_array_equal(segment_cube(model, cube_array[:20, :20], device="cpu").labels, default)
    with pytest.raises(ConfigError, match="the model is on cpu but device 'meta' was asked for"):
        segment_cube(model, cube_array[:20, :20], device="meta")


def test_raw_spectra_are_read_in_row_strips(model, cube_array, tmp_path, monkeypatch):
    path = tmp_path / "cube.npy"
    np.save(path, cube_array)
    expected = segment_cube(model, cube_array, tile=32, return_probabilities=True)
    cube = open_cube(path)
    read_heights = []
    read_window = cube.read_window
    monkeypatch.setattr(
        cube,
        "read_window",
        lambda rows, cols: read_heights.append(rows.stop - rows.start) or read_window(rows, cols),
    )
    # 3 rows of the widest window (32 + 2 halos) x 20 bands x 4 bytes: 3-4 rows per strip.
    widest = 32 + 2 * model.receptive_radius
    monkeypatch.setattr(segmentation, "STRIP_BYTES", 3 * widest * N_BANDS * 4)
    strips = segment_cube(model, cube, tile=32, return_probabilities=True, workers=1)
    assert 3 <= max(read_heights) <= 4
    assert len(read_heights) > 8 * len(list(tile_windows((70, 90), 32, model.receptive_radius)))
    assert np.array_equal(strips.labels, expected.labels)
    np.testing.assert_allclose(strips.probabilities, expected.probabilities, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_next_tiles_rows_are_prefetched(model, cube_array, tmp_path, monkeypatch, workers):
    path = tmp_path / "cube.npy"
    np.save(path, cube_array)
    cube = open_cube(path)
    prefetched = []
    monkeypatch.setattr(cube, "prefetch_rows", prefetched.append)
    result = segment_cube(model, cube, tile=32, workers=workers)
    windows = list(tile_windows((70, 90), 32, model.receptive_radius))
    # every window but the first is announced before it starts
    assert {(rows.start, rows.stop) for rows in prefetched} == {
        (rows.start, rows.stop) for rows, _, _, _ in windows[1:]
    }
    assert np.array_equal(result.labels, segment_cube(model, cube_array, tile=32).labels)


@pytest.mark.parametrize("where", ["one pixel", "every pixel", "infinite"])
def test_non_finite_pixels_are_refused_as_training_refuses_them(model, cube_array, where):
    from napari_dgc.errors import CubeFormatError

    cube = cube_array.copy()
    if where == "one pixel":
        cube[33, 41, 2] = np.nan
    elif where == "every pixel":
        cube[:] = np.nan
    else:
        cube[33, 41, 2] = -np.inf
    match = r"NaN or infinite value at pixel \(row 33, col 41\), band 2" if where != "every pixel" else "NaN"
    for workers in (1, 3):
        with pytest.raises(CubeFormatError, match=match):
            segment_cube(model, cube, tile=32, workers=workers)


@pytest.mark.parametrize("shape", [(0, 9), (9, 0)])
def test_a_cube_without_pixels_is_refused(model, shape):
    from napari_dgc.errors import CubeFormatError

    with pytest.raises(CubeFormatError, match="the cube has no pixels"):
        segment_cube(model, np.zeros((*shape, N_BANDS), np.float32))
