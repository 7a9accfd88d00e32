"""Crop-pair sampling (exact overlap correspondence, streaming, state) and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgc.errors import ConfigError, CubeFormatError
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import PairStream, SampledCube, gather_pair, match_pixels, open_sources


def coordinate_cube(rows: int = 50, cols: int = 60) -> np.ndarray:
    """A cube whose bands are the pixel's own row and column (and a constant)."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r, c, np.ones_like(r)], axis=-1).astype(np.float32)


def _stream(cubes, crop=16, pairs_per_cube=3, seed=0, augment=True):
    return PairStream(open_sources(cubes), crop, (0.2, 0.8), pairs_per_cube, seed, augment)


@pytest.mark.parametrize("augment", [False, True])
def test_crops_show_their_scene_coordinates_and_matches_are_the_same_location(augment):
    stream = _stream([coordinate_cube()], augment=augment)
    for _ in range(10):
        pair = stream.next_pair()
        crop_a = pair.pixels[pair.index_a]
        crop_b = pair.pixels[pair.index_b]
        assert np.array_equal(crop_a[..., :2], pair.coords_a)
        assert np.array_equal(crop_b[..., :2], pair.coords_b)
        assert len(pair.match_a) > 0
        matched_a = crop_a.reshape(-1, 3)[pair.match_a]
        matched_b = crop_b.reshape(-1, 3)[pair.match_b]
        assert np.array_equal(matched_a, matched_b)


def test_every_shared_scene_pixel_is_matched():
    stream = _stream([coordinate_cube()], augment=True)
    pair = stream.next_pair()
    scene_a = {tuple(v) for v in pair.coords_a.reshape(-1, 2)}
    in_a = [tuple(v) in scene_a for v in pair.coords_b.reshape(-1, 2)]
    assert len(pair.match_b) == sum(in_a)


def test_overlap_fraction_without_augmentation_is_in_range():
    stream = _stream([coordinate_cube(80, 80)], augment=False)
    fractions = [len(stream.next_pair().match_a) / 16**2 for _ in range(30)]
    assert min(fractions) >= 0.2 - 0.07 and max(fractions) <= 0.8 + 0.07
    assert max(fractions) - min(fractions) > 0.2


def test_pair_pixels_are_read_once_per_scene_pixel():
    pair = _stream([coordinate_cube()], augment=False).next_pair()
    unique_locations = {tuple(v) for v in np.concatenate([pair.coords_a, pair.coords_b]).reshape(-1, 2)}
    assert pair.pixels.shape[0] == len(unique_locations) < 2 * 16 * 16


def test_match_pixels_handles_duplicates():
    coords_a = np.array([[[0, 0], [0, 0]], [[0, 1], [1, 1]]])
    coords_b = np.array([[[0, 1], [5, 5]], [[0, 0], [1, 1]]])
    match_a, match_b = match_pixels(coords_a, coords_b, width=10)
    flat_a, flat_b = coords_a.reshape(-1, 2), coords_b.reshape(-1, 2)
    assert match_b.tolist() == [0, 2, 3]
    assert np.array_equal(flat_a[match_a], flat_b[match_b])


def test_cubes_are_visited_in_runs_of_pairs_per_cube():
    cubes = [coordinate_cube(30, 30) for _ in range(3)]
    stream = _stream(cubes, pairs_per_cube=4)
    visits = [stream.next_pair().cube_index for _ in range(24)]
    runs = [visits[i : i + 4] for i in range(0, 24, 4)]
    assert all(len(set(run)) == 1 for run in runs)
    assert sorted(run[0] for run in runs[:3]) == [0, 1, 2]  # each cube once per epoch


def test_quasi_random_positions_cover_the_cube_evenly():
    stream = _stream([coordinate_cube(96, 96)], crop=16, pairs_per_cube=1000, augment=False)
    centres = np.array([stream.next_pair().coords_a.reshape(-1, 2).mean(axis=0) for _ in range(64)])
    quadrant = (centres[:, 0] >= 48).astype(int) * 2 + (centres[:, 1] >= 48)
    counts = np.bincount(quadrant, minlength=4)
    assert counts.min() >= 10, counts


def test_state_dict_resumes_the_same_pairs():
    cubes = [coordinate_cube(40, 40), coordinate_cube(40, 40) * 2]
    stream = _stream(cubes, pairs_per_cube=2)
    for _ in range(3):
        stream.next_pair()
    state = stream.state_dict()
    expected = [stream.next_pair() for _ in range(5)]
    resumed = _stream(cubes, pairs_per_cube=2)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (resumed.next_pair() for _ in range(5))):
        assert got.cube_index == want.cube_index
        assert np.array_equal(got.coords_a, want.coords_a)
        assert np.array_equal(got.coords_b, want.coords_b)
        assert got.spectral_shift == want.spectral_shift


def test_state_of_another_dataset_is_refused():
    state = _stream([coordinate_cube()]).state_dict()
    with pytest.raises(ConfigError, match="same cubes"):
        _stream([coordinate_cube(), coordinate_cube()]).load_state_dict(state)


def test_only_the_needed_window_is_read():
    class CountingCube:
        shape_hw, n_bands, path = (200, 200), 3, "counting.npy"

        def __init__(self):
            self.data = coordinate_cube(200, 200)
            self.read = 0

        def read_window(self, rows, cols):
            window = self.data[rows, cols]
            self.read += window.shape[0] * window.shape[1]
            return window

    cube = CountingCube()
    source = open_sources([cube])[0]
    stream = PairStream([source], 16, (0.2, 0.8), 5, 0, True)
    stream.next_pair()
    assert 0 < cube.read <= 40 * 40


# -- bad input ---------------------------------------------------------------------------------
def test_cubes_with_different_band_counts_are_refused():
    with pytest.raises(CubeFormatError, match="bands"):
        open_sources([np.zeros((20, 20, 5), np.float32), np.zeros((20, 20, 6), np.float32)])


def test_cube_smaller_than_the_crop_is_refused():
    with pytest.raises(CubeFormatError, match="smaller than the 16 x 16 crop"):
        _stream([coordinate_cube(12, 40)])


def test_nan_pixels_are_refused_with_their_position():
    cube = coordinate_cube(20, 20)
    cube[3, 4, 1] = np.nan
    source = SampledCube(cube, "scene.npy")
    with pytest.raises(CubeFormatError, match=r"scene.npy: NaN or infinite value at pixel \(row 3, col 4\)"):
        source.read_window(slice(0, 20), slice(0, 20))
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), axis=-1)
    with pytest.raises(CubeFormatError):
        gather_pair(source, coords, coords + 1, 0, 0)


def test_empty_dataset_and_non_3d_arrays_are_refused():
    with pytest.raises(ConfigError):
        open_sources([])
    with pytest.raises(CubeFormatError, match="rows, cols, bands"):
        open_sources([np.zeros((20, 20), np.float32)])


# -- normalisation -----------------------------------------------------------------------------
def test_statistics_are_dataset_level_not_per_cube(rng):
    dark = rng.normal(1.0, 0.1, (30, 30, 4)).astype(np.float32)
    bright = rng.normal(5.0, 0.1, (30, 30, 4)).astype(np.float32)
    both = compute_band_statistics(open_sources([dark, bright]), brightness_norm=False)
    alone = compute_band_statistics(open_sources([dark]), brightness_norm=False)
    np.testing.assert_allclose(both.offset, 3.0, atol=0.05)
    np.testing.assert_allclose(both.scale, 2.0, atol=0.05)
    np.testing.assert_allclose(alone.offset, 1.0, atol=0.05)


def test_brightness_normalised_statistics_ignore_illumination_gain(rng):
    cube = rng.uniform(0.5, 1.0, (30, 30, 6)).astype(np.float32)
    plain = compute_band_statistics(open_sources([cube]), brightness_norm=True)
    gained = compute_band_statistics(open_sources([cube, 3.0 * cube]), brightness_norm=True)
    np.testing.assert_allclose(plain.offset, gained.offset, rtol=1e-6)


def test_constant_bands_get_a_finite_scale(rng):
    cube = rng.normal(0.0, 1.0, (20, 20, 5)).astype(np.float32)
    cube[..., 2] = 7.0
    stats = compute_band_statistics(open_sources([cube]), brightness_norm=False)
    assert stats.constant_bands.tolist() == [2]
    assert np.all(np.isfinite(stats.scale)) and stats.scale[2] > 0


def test_all_constant_dataset_is_refused():
    with pytest.raises(CubeFormatError, match="constant"):
        compute_band_statistics(open_sources([np.ones((20, 20, 4), np.float32)]), brightness_norm=False)
