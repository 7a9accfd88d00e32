"""Tests of the synthetic leaf scene generator (napari_dgc.datasets.synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_dgc.datasets.synthetic import (
    BACKGROUND,
    CLASS_NAMES,
    LESION,
    TISSUE,
    Illumination,
    make_leaf_dataset,
    make_leaf_scene,
    save_scene_npy,
)
from napari_dgc.errors import ConfigError, DGCError
from napari_dgc.io import open_cube


@pytest.fixture(scope="module")
def default_scene():
    """The default scene (256 x 256 x 301, seed 0): the demo's and the benchmarks' data."""
    return make_leaf_scene()


def _band(wavelengths: np.ndarray, nm: float) -> int:
    return int(np.argmin(np.abs(wavelengths - nm)))


def _mean_spectrum(scene, label: int) -> np.ndarray:
    return scene.cube[scene.labels == label].mean(axis=0)


def _background_tissue_iou(predicted_tissue: np.ndarray, labels: np.ndarray) -> float:
    """Mean of background and tissue (healthy + lesion) IoU, for the better cluster-to-class pairing."""
    truth = labels > 0
    scores = []
    for tissue in (predicted_tissue, ~predicted_tissue):
        ious = [
            np.sum(tissue & truth) / np.sum(tissue | truth),
            np.sum(~tissue & ~truth) / np.sum(~tissue | ~truth),
        ]
        scores.append(float(np.mean(ious)))
    return max(scores)


def test_same_seed_gives_identical_scenes():
    first = make_leaf_scene(40, 36, 24, seed=7)
    second = make_leaf_scene(40, 36, 24, seed=7)
    assert first.cube.tobytes() == second.cube.tobytes()
    assert first.labels.tobytes() == second.labels.tobytes()
    assert first.illumination == second.illumination


def test_different_seeds_give_different_scenes():
    first = make_leaf_scene(40, 36, 24, seed=7)
    other = make_leaf_scene(40, 36, 24, seed=8)
    assert not np.array_equal(first.labels, other.labels)
    assert not np.array_equal(first.cube, other.cube)


@pytest.mark.parametrize(
    ("rows", "cols", "n_bands", "wl_range"),
    [(40, 57, 20, (400.0, 1000.0)), (24, 24, 8, (450.0, 900.0)), (5, 9, 1, (400.0, 1000.0))],
)
def test_shapes_and_dtypes(rows, cols, n_bands, wl_range):
    scene = make_leaf_scene(rows, cols, n_bands, wl_range, seed=3)
    assert scene.cube.shape == (rows, cols, n_bands)
    assert scene.cube.dtype == np.float32
    assert scene.labels.shape == (rows, cols)
    assert scene.labels.dtype == np.uint8
    assert scene.wavelengths.shape == (n_bands,)
    assert scene.wavelengths.dtype == np.float64
    assert scene.wavelengths[0] == wl_range[0]
    assert np.isfinite(scene.cube).all()
    assert set(np.unique(scene.labels)) <= {BACKGROUND, TISSUE, LESION}
    assert scene.class_names == CLASS_NAMES == ("background", "tissue", "lesion")


def test_default_scene_has_all_classes(default_scene):
    assert default_scene.cube.shape == (256, 256, 301)
    assert default_scene.wavelengths[0] == 400.0 and default_scene.wavelengths[-1] == 1000.0
    counts = np.bincount(default_scene.labels.ravel(), minlength=3)
    fractions = counts / counts.sum()
    assert fractions[BACKGROUND] > 0.4
    assert fractions[TISSUE] > 0.1
    assert fractions[LESION] > 0.005


def test_healthy_tissue_has_vegetation_features(default_scene):
    wl = default_scene.wavelengths
    leaf = _mean_spectrum(default_scene, TISSUE)
    at = {nm: leaf[_band(wl, nm)] for nm in (450, 550, 670, 780, 900, 970)}
    assert at[550] > at[450] and at[550] > at[670]  # green peak
    assert at[780] > 4 * at[670]  # chlorophyll absorption then red edge
    assert at[780] > 0.35  # NIR plateau
    assert at[970] < 0.95 * at[900]  # water band


def test_background_is_dark_and_lesions_darker_than_healthy_in_nir(default_scene):
    wl = default_scene.wavelengths
    nir = slice(_band(wl, 780), _band(wl, 920))
    background = _mean_spectrum(default_scene, BACKGROUND)
    healthy = _mean_spectrum(default_scene, TISSUE)
    lesion = _mean_spectrum(default_scene, LESION)
    assert background.max() < 0.1
    assert background[nir].mean() < lesion[nir].mean() < 0.6 * healthy[nir].mean()
    # Lesions lack the red edge: their NIR / red ratio is far below healthy tissue's.
    red = _band(wl, 670)
    assert lesion[nir].mean() / lesion[red] < 0.5 * healthy[nir].mean() / healthy[red]


def test_edges_hold_mixed_pixels():
    scene = make_leaf_scene(96, 96, 31, seed=2, noise=0.0, lesion_fraction=0.0)
    nir = scene.cube[..., _band(scene.wavelengths, 850)]
    leaf = scene.labels == TISSUE
    core_leaf = ndimage.binary_erosion(leaf, iterations=3)
    core_belt = ndimage.binary_erosion(~leaf, iterations=6)
    low, high = np.median(nir[core_belt]), np.median(nir[core_leaf])
    between = (nir > low + 0.25 * (high - low)) & (nir < low + 0.75 * (high - low))
    edge = (leaf ^ ndimage.binary_erosion(leaf)) | (leaf ^ ndimage.binary_dilation(leaf))
    assert between.sum() > 20
    assert between[edge].sum() > 0.5 * between.sum()  # mixtures sit on the outlines


def test_noise_is_higher_at_the_ends_of_the_range():
    clean = make_leaf_scene(64, 64, 61, seed=4, noise=0.0)
    noisy = make_leaf_scene(64, 64, 61, seed=4)
    assert np.array_equal(clean.labels, noisy.labels)
    residual = (noisy.cube - clean.cube)[clean.labels == BACKGROUND]
    spread = residual.std(axis=0)
    wl = clean.wavelengths
    assert spread[_band(wl, 400)] > 1.5 * spread[_band(wl, 650)]
    assert spread[_band(wl, 1000)] > 1.5 * spread[_band(wl, 650)]


def test_illumination_scales_the_scene_and_keeps_its_layout():
    dim = make_leaf_scene(32, 32, 12, seed=5, noise=0.0, illumination=Illumination(gain=1.0))
    bright = make_leaf_scene(32, 32, 12, seed=5, noise=0.0, illumination=Illumination(gain=1.5))
    assert np.array_equal(dim.labels, bright.labels)
    np.testing.assert_allclose(bright.cube, 1.5 * dim.cube, rtol=1e-5)


def test_dataset_scenes_differ_in_illumination_and_layout():
    scenes = make_leaf_dataset(3, 32, 40, 10, seed=11)
    assert len(scenes) == 3
    assert len({scene.illumination.gain for scene in scenes}) == 3
    assert len({scene.illumination.tilt_angle_deg for scene in scenes}) == 3
    assert not np.array_equal(scenes[0].labels, scenes[1].labels)
    again = make_leaf_dataset(3, 32, 40, 10, seed=11)
    assert all(np.array_equal(a.cube, b.cube) for a, b in zip(scenes, again))


def test_kmeans_cannot_separate_background_and_tissue_perfectly(default_scene):
    from sklearn.cluster import KMeans

    spectra = default_scene.cube.reshape(-1, default_scene.cube.shape[-1])
    unit = spectra / np.linalg.norm(spectra, axis=1, keepdims=True)
    scores = {}
    for name, features in (("raw", spectra), ("l2", unit)):
        clusters = KMeans(n_clusters=2, n_init=3, random_state=0).fit_predict(features)
        scores[name] = _background_tissue_iou(
            clusters.reshape(default_scene.labels.shape) == 1, default_scene.labels
        )
    assert 0.8 < scores["raw"] < 0.95, scores
    assert 0.8 < scores["l2"] < 0.98, scores


def test_ndvi_separates_healthy_tissue_from_background(default_scene):
    wl = default_scene.wavelengths
    red = default_scene.cube[..., _band(wl, 670)]
    nir = default_scene.cube[..., _band(wl, 800)]
    ndvi = (nir - red) / (nir + red)
    leaf_core = ndimage.binary_erosion(default_scene.labels == TISSUE, iterations=2)
    belt = default_scene.labels == BACKGROUND
    assert np.mean(ndvi[leaf_core] > 0.5) > 0.99
    assert np.mean(ndvi[belt] < 0.5) > 0.97


def test_save_scene_npy_round_trip(tmp_path):
    scene = make_leaf_scene(20, 24, 9, seed=1)
    paths = save_scene_npy(scene, tmp_path / "out", stem="leaf_01")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "leaf_01.npy",
        "leaf_01_labels.npy",
        "leaf_01.json",
    }
    np.testing.assert_array_equal(np.load(paths["cube"]), scene.cube)
    np.testing.assert_array_equal(np.load(paths["labels"]), scene.labels)
    sidecar = json.loads(paths["metadata"].read_text())
    np.testing.assert_array_equal(sidecar["wavelengths"], scene.wavelengths)
    assert sidecar["class_names"] == list(CLASS_NAMES)
    assert sidecar["illumination"]["gain"] == scene.illumination.gain
    cube = open_cube(paths["cube"])
    np.testing.assert_array_equal(cube.read_window(slice(0, 20), slice(0, 24)), scene.cube)


def test_save_scene_npy_rejects_a_path_as_stem(tmp_path):
    scene = make_leaf_scene(8, 8, 3)
    with pytest.raises(ConfigError, match="stem"):
        save_scene_npy(scene, tmp_path, stem="../escape")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 2}, "at least 4 x 4"),
        ({"cols": 3.5}, "at least 4 x 4"),
        ({"n_bands": 0}, "at least one band"),
        ({"wl_range": (1000.0, 400.0)}, "increasing"),
        ({"wl_range": (-5.0, 400.0)}, "increasing"),
        ({"n_leaves": -1}, "n_leaves"),
        ({"lesion_fraction": 1.5}, "lesion_fraction"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_leaf_scene(**{"rows": 16, "cols": 16, "n_bands": 4, **kwargs})
    assert isinstance(caught.value, DGCError)


def test_dataset_needs_a_scene():
    with pytest.raises(ConfigError, match="at least one scene"):
        make_leaf_dataset(0)


def test_no_leaves_gives_pure_background():
    scene = make_leaf_scene(16, 16, 5, n_leaves=0, seed=1)
    assert (scene.labels == BACKGROUND).all()
    assert scene.cube.mean() < 0.1
