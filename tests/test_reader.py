"""napari reader contribution: layers it adds, files it declines, errors napari survives."""

from __future__ import annotations

import fnmatch
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


def _package_reader():
    from npe2 import PluginManifest

    import napari_dgc

    manifest = PluginManifest.from_file(Path(napari_dgc.__file__).parent / "napari.yaml")
    (reader,) = manifest.contributions.readers
    return reader


def test_reader_claims_only_the_formats_it_owns():
    """Issue 15, item 10: specific patterns, no catch-all "*" (napari asks about every file then)."""
    reader = _package_reader()
    assert "*" not in reader.filename_patterns
    assert all(pattern.startswith("*.") for pattern in reader.filename_patterns)
    assert reader.accepts_directories  # folders of PNG bands
    for name in (
        "cube.hdr",
        "cube.bil",
        "cube.bsq",
        "cube.bip",
        "cube.dat",
        "cube.mat",
        "cube.npy",
        "cube.tif",
    ):
        assert any(fnmatch.fnmatch(name, pattern) for pattern in reader.filename_patterns), name
    for name in ("photo.png", "table.csv", "movie.mp4", "notes.txt"):
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in reader.filename_patterns), name


def test_napari_uses_our_reader_where_no_other_claims_the_format(tmp_path):
    from napari.plugins import _npe2

    assert list(_npe2.get_readers(str(tmp_path / "cube.bil"))) == ["napari-dgc"]
    assert list(_npe2.get_readers(str(tmp_path / "cube.mat"))) == ["napari-dgc"]
    assert "napari-dgc" not in _npe2.get_readers(str(tmp_path / "photo.png"))
    assert "napari-dgc" in _npe2.get_readers(str(tmp_path / "cube.hdr"))  # shared: napari asks


def test_band_axis_is_labelled_and_its_wavelength_shown(make_napari_viewer, tmp_path, rng):
    from napari_dgc._qt.band_wavelength import follow_band_wavelength

    cube = rng.random((6, 5, 4), dtype=np.float32)
    path = tmp_path / "cube.npy"
    np.save(path, cube)
    (tmp_path / "cube.json").write_text('{"wavelengths": [500, 510, 520, 530]}')
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-dgc")
    assert viewer.dims.axis_labels[0] == "band"
    assert follow_band_wavelength(viewer)
    assert not follow_band_wavelength(viewer)  # once per viewer
    viewer.dims.set_current_step(0, 2)
    assert viewer.text_overlay.visible
    assert viewer.text_overlay.text == "band 2 of 4 · 520.0 nm"
    viewer.dims.set_current_step(0, 3)
    assert viewer.text_overlay.text == "band 3 of 4 · 530.0 nm"
