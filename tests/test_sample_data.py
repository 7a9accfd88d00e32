"""Tests of the npe2 sample data and the bundled resources."""

from __future__ import annotations

import re

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_dgc._sample_data import (
    CORN_KERNEL_HEADER,
    RESOURCES,
    corn_kernel_sample,
    resource_path,
    synthetic_leaf_sample,
)
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.io import open_cube


def test_resource_path_finds_bundled_files():
    header = resource_path(CORN_KERNEL_HEADER)
    assert header.is_file() and header.is_absolute()
    assert resource_path("corn_kernel/LICENSE").read_text().startswith("Mozilla Public License")


@pytest.mark.parametrize("name", ["corn_kernel/missing.hdr", "../setup.py", "corn_kernel"])
def test_resource_path_rejects_missing_or_outside_names(name):
    with pytest.raises(FileNotFoundError):
        resource_path(name)


def test_every_bundled_file_is_documented_with_a_licence():
    readme = (RESOURCES / "README.md").read_text()
    data_files = [p for p in RESOURCES.rglob("*") if p.is_file() and p.name not in ("README.md", "LICENSE")]
    assert data_files
    for path in data_files:
        relative = path.relative_to(RESOURCES).as_posix()
        assert f"`{relative}`" in readme, f"{relative} is not listed in resources/README.md"
        assert (path.parent / "LICENSE").is_file(), f"{relative} has no LICENSE next to it"
    assert re.search(r"[0-9a-f]{40}", readme)  # source commits are recorded


def test_synthetic_sample_layers():
    cube_layer, rgb_layer, labels_layer = synthetic_leaf_sample(rows=30, cols=44, seed=2)
    scene = make_leaf_scene(30, 44, seed=2)

    data, kwargs, kind = cube_layer
    assert kind == "image" and data.shape == (301, 30, 44) and data.dtype == np.float32
    np.testing.assert_array_equal(data, np.moveaxis(scene.cube, -1, 0))
    assert kwargs["metadata"]["wavelengths"] == pytest.approx(list(scene.wavelengths))
    assert kwargs["metadata"]["dgc_band_axis"] == 0
    assert kwargs["metadata"]["dgc_provenance"]["seed"] == 2

    data, kwargs, kind = rgb_layer
    assert kind == "image" and kwargs["rgb"] and data.shape == (30, 44, 3)

    data, kwargs, kind = labels_layer
    assert kind == "labels" and kwargs["name"] == "ground truth"
    np.testing.assert_array_equal(data, scene.labels)
    assert kwargs["metadata"]["class_names"] == ["background", "tissue", "lesion"]
    assert kwargs["features"]["class"] == ["background", "tissue", "lesion"]


def test_synthetic_sample_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dgc", "synthetic_leaf")
    cube, rgb, truth = viewer.layers
    assert isinstance(cube, Image) and cube.data.shape == (301, 256, 256)
    assert len(cube.metadata["wavelengths"]) == 301
    assert isinstance(rgb, Image) and rgb.rgb
    assert isinstance(truth, Labels) and truth.name == "ground truth"
    assert set(np.unique(truth.data)) == {0, 1, 2}
    assert list(truth.features["class"]) == ["background", "tissue", "lesion"]


def test_corn_kernel_sample_has_580_bands_with_wavelengths(make_napari_viewer):
    (cube_data, cube_kwargs, _), (rgb, _, _) = corn_kernel_sample()
    assert cube_data.shape == (580, 31, 43)
    wavelengths = cube_kwargs["metadata"]["wavelengths"]
    assert len(wavelengths) == 580
    assert wavelengths[0] == pytest.approx(366.551) and wavelengths[-1] == pytest.approx(1048.421)
    assert rgb.shape == (31, 43, 3)

    viewer = make_napari_viewer()
    viewer.open_sample("napari-dgc", "corn_kernel")
    assert viewer.layers[0].data.shape == (580, 31, 43)
    assert viewer.layers[0].name == "corn kernel"


def test_bundled_muufl_subset_opens():
    cube = open_cube(resource_path("muufl/an_hsi_img_for_tgt_det_demo.mat"))
    assert cube.shape_hw == (36, 36)
    assert cube.n_bands == 72
    assert cube.wavelengths is not None and 360 < cube.wavelengths[0] < 370
