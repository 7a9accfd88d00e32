"""Pseudo-RGB: band choice (visible and fallback), robust stretch, reading only three bands."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _io_helpers import make_cube, write_envi

from napari_dgc.io import Cube, open_cube
from napari_dgc.io.lazy import BandStack
from napari_dgc.io.pseudo_rgb import choose_rgb_bands, pseudo_rgb, stretch_channels


def test_visible_cube_uses_bands_nearest_640_550_460():
    wavelengths = np.arange(400.0, 1001.0, 2.0)  # 301 bands as in the paper
    choice = choose_rgb_bands(wavelengths, wavelengths.size)
    assert choice.method == "nearest"
    assert choice.wavelengths == (640.0, 550.0, 460.0)
    assert choice.indices == (120, 75, 30)


def test_nearest_picks_the_closest_band_of_an_irregular_grid():
    wavelengths = np.array([455.0, 470.0, 548.0, 553.0, 630.0, 645.0, 700.0])
    assert choose_rgb_bands(wavelengths, 7).indices == (5, 2, 0)  # 645, 548, 455 nm


@pytest.mark.parametrize("wavelengths", [np.linspace(1293, 2215, 96), np.linspace(500, 1000, 96)])
def test_cubes_not_covering_the_targets_spread_over_their_range(wavelengths):
    choice = choose_rgb_bands(wavelengths, 96)
    assert choice.method == "spread"
    assert choice.indices == (86, 48, 10)  # 90 %, 50 %, 10 % of 0..95; red = longest wavelength


def test_spread_follows_wavelength_order_when_bands_are_descending():
    wavelengths = np.linspace(2200, 1300, 11)
    choice = choose_rgb_bands(wavelengths, 11)
    assert choice.wavelengths[0] > choice.wavelengths[1] > choice.wavelengths[2]


def test_unknown_wavelengths_spread_by_index():
    choice = choose_rgb_bands(None, 11)
    assert (choice.indices, choice.wavelengths, choice.method) == ((9, 5, 1), None, "spread")


def test_targets_must_be_three():
    with pytest.raises(ValueError, match="3 wavelengths"):
        choose_rgb_bands(None, 10, targets_nm=(600, 500))


def test_stretch_maps_percentiles_to_0_and_1_and_handles_constant_and_nan():
    ramp = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    constant = np.full((100, 100), 7.0, np.float32)
    holes = ramp.copy()
    holes[:3, :] = np.nan
    holes[3, 0] = np.inf
    rgb = stretch_channels(np.stack([ramp, constant, holes]), percentiles=(1, 99))
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.float32
    low, high = np.percentile(ramp, [1, 99])
    np.testing.assert_allclose(rgb[50, 50, 0], (ramp[50, 50] - low) / (high - low), rtol=1e-5)
    assert rgb[0, 0, 0] == 0.0 and rgb[-1, -1, 0] == 1.0
    assert np.all(rgb[..., 1] == 0.0)
    assert np.all(rgb[:4, 0, 2] == 0.0) and np.isfinite(rgb).all()
    with pytest.raises(ValueError, match="percentiles"):
        stretch_channels(np.stack([ramp] * 3), percentiles=(50, 10))


def test_pseudo_rgb_reads_only_three_bands(tmp_path):
    reads: list[int] = []
    planes = np.random.default_rng(3).random((40, 8, 9)).astype(np.float32)
    stack = BandStack(40, (8, 9), np.float32, lambda i: (reads.append(i), planes[i])[1])
    wavelengths = np.linspace(400, 790, 40)
    cube = Cube(stack, band_axis=0, wavelengths=wavelengths, path=tmp_path, format="png-folder")
    rgb = pseudo_rgb(cube)
    expected_bands = choose_rgb_bands(wavelengths, 40).indices
    assert sorted(reads) == sorted(expected_bands)
    np.testing.assert_array_equal(rgb, stretch_channels(planes[list(expected_bands)]))


@pytest.mark.parametrize("interleave", ["bsq", "bip"])
def test_pseudo_rgb_memory_is_a_small_fraction_of_the_cube(tmp_path, interleave):
    values = make_cube(np.random.default_rng(4), shape=(300, 300, 80))  # 28.8 MB float32
    header, _ = write_envi(tmp_path, values, interleave=interleave, wavelengths=np.linspace(400, 1000, 80))
    cube = open_cube(header)
    tracemalloc.start()
    rgb = pseudo_rgb(cube)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < cube.nbytes / 5, f"peak {peak} bytes for a {cube.nbytes}-byte cube"
    indices = choose_rgb_bands(cube.wavelengths, 80).indices
    np.testing.assert_array_equal(rgb, stretch_channels(np.moveaxis(values[:, :, list(indices)], 2, 0)))
