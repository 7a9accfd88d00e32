"""napari reader contribution: layers it adds, files it declines, errors napari survives."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from _io_helpers import make_cube, write_envi
from PIL import Image

from napari_dgc._reader import cube_layer_data, napari_get_reader
from napari_dgc.errors import CubeFormatError
from napari_dgc.io import open_cube

ROOT = Path(__file__).parent.parent
WAVELENGTHS = np.arange(400.0, 1000.0, 30.0)  # 20 bands


@pytest.fixture
def envi_header(tmp_path, rng) -> Path:
    return write_envi(tmp_path, make_cube(rng, shape=(8, 9, 20)), interleave="bil", wavelengths=WAVELENGTHS)[
        0
    ]


def test_manifest_passes_npe2_validate():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(ROOT / "napari.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_reader_points_here_and_lists_every_format():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    (reader,) = manifest.contributions.readers
    command = next(c for c in manifest.contributions.commands if c.id == reader.command)
    module, name = command.python_name.split(":")
    assert getattr(import_module(module), name) is napari_get_reader
    assert reader.accepts_directories
    for pattern in [
        "*.hdr",
        "*.raw",
        "*.img",
        "*.dat",
        "*.bil",
        "*.bsq",
        "*.bip",
        "*.mat",
        "*.npy",
        "*.tif",
        "*.tiff",
    ]:
        assert pattern in reader.filename_patterns


def test_layer_data_cube_and_pseudo_rgb(envi_header):
    cube = open_cube(envi_header)
    (cube_data, cube_kwargs, cube_type), (rgb, rgb_kwargs, rgb_type) = cube_layer_data(cube)
    assert cube_type == rgb_type == "image"
    assert isinstance(cube_data, np.memmap) and cube_data.shape == (20, 8, 9)  # lazy, band-first
    assert cube_kwargs["name"] == "scene" and cube_kwargs["visible"] is False
    metadata = cube_kwargs["metadata"]
    np.testing.assert_allclose(metadata["wavelengths"], WAVELENGTHS)
    assert (metadata["dgc_cube_path"], metadata["dgc_band_axis"], metadata["dgc_format"]) == (
        str(envi_header),
        0,
        "envi",
    )
    assert rgb.shape == (8, 9, 3) and rgb_kwargs["rgb"] is True
    assert rgb_kwargs["name"] == "scene (pseudo-RGB)"
    assert rgb_kwargs["metadata"]["dgc_cube_layer"] == "scene"
    assert rgb_kwargs["metadata"]["dgc_rgb_method"] == "nearest"
    assert cube_layer_data(cube, name="leaf")[1][1]["name"] == "leaf (pseudo-RGB)"


def test_reader_accepts_every_format(tmp_path, rng, envi_header):
    values = make_cube(rng, shape=(6, 7, 5))
    np.save(tmp_path / "cube.npy", values)
    scipy.io.savemat(tmp_path / "cube.mat", {"cube": values})
    tifffile.imwrite(tmp_path / "cube.tif", np.moveaxis(values, 2, 0))
    folder = tmp_path / "bands"
    folder.mkdir()
    for band in range(3):
        Image.fromarray(np.full((4, 5), band, np.uint8)).save(folder / f"s_{500 + band}nm.png")
    data_file = envi_header.with_suffix(".raw")
    for path in [
        envi_header,
        data_file,
        tmp_path / "cube.npy",
        tmp_path / "cube.mat",
        tmp_path / "cube.tif",
        folder,
    ]:
        reader = napari_get_reader(str(path))
        assert callable(reader), path
        layers = reader(str(path))
        assert len(layers) == 2 and layers[1][1]["rgb"] is True
    assert callable(napari_get_reader([str(envi_header)]))


def test_reader_declines_files_it_does_not_handle(tmp_path):
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "photo.png")
    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((5, 5), np.uint16))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 5, 3), np.uint8))
    np.save(tmp_path / "image.npy", np.zeros((5, 5)))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "orphan.raw").write_bytes(b"\0" * 16)
    (tmp_path / "analyze.hdr").write_bytes(b"\x5c\x01" + b"\0" * 346)  # binary Analyze header
    plain_folder = tmp_path / "plain"
    plain_folder.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(plain_folder / "image.png")
    names = [
        "photo.png",
        "gray.tif",
        "rgb.tif",
        "image.npy",
        "notes.txt",
        "orphan.raw",
        "analyze.hdr",
        "plain",
    ]
    for name in names:
        assert napari_get_reader(str(tmp_path / name)) is None, name
    assert napari_get_reader([str(tmp_path / "gray.tif"), str(tmp_path / "image.npy")]) is None


def test_broken_file_of_a_handled_format_raises_a_clear_error(envi_header):
    envi_header.with_suffix(".raw").write_bytes(b"\0" * 10)
    reader = napari_get_reader(str(envi_header))
    with pytest.raises(CubeFormatError, match="scene.raw: data file is 10 bytes"):
        reader(str(envi_header))


def test_viewer_opens_cube_and_survives_a_broken_one(make_napari_viewer, tmp_path, rng, envi_header):
    viewer = make_napari_viewer()
    viewer.open(str(envi_header), plugin="napari-dgc")
    assert [layer.name for layer in viewer.layers] == ["scene", "scene (pseudo-RGB)"]
    cube_layer, rgb_layer = viewer.layers
    assert cube_layer.data.shape == (20, 8, 9) and not cube_layer.visible and rgb_layer.rgb
    np.testing.assert_allclose(cube_layer.metadata["wavelengths"], WAVELENGTHS)

    broken = write_envi(tmp_path / "broken", make_cube(rng, shape=(4, 4, 3)))[0]
    broken.with_suffix(".raw").write_bytes(b"")
    with pytest.raises(CubeFormatError, match="scene.raw: data file is 0 bytes"):
        viewer.open(str(broken), plugin="napari-dgc")
    assert len(viewer.layers) == 2  # nothing half-added
    viewer.dims.set_current_step(0, 5)  # the viewer still works
    viewer.open(str(envi_header), plugin="napari-dgc")
    assert len(viewer.layers) == 4
