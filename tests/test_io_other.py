""".npy, TIFF and PNG-folder cubes, and the lazy array-likes behind them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _io_helpers import make_cube
from PIL import Image

from napari_dgc.io import Cube, open_cube
from napari_dgc.io.lazy import AxisPermuted, BandStack

COFFEE = Path("/work/shared/data/hacarus_nir_food/data/coffee")


def _whole(cube) -> np.ndarray:
    return cube.read_window(slice(None), slice(None))


# ------------------------------------------------------------------ npy
def test_npy_is_memory_mapped_band_last(tmp_path, rng):
    expected = make_cube(rng, shape=(6, 7, 5))
    np.save(tmp_path / "cube.npy", expected)
    cube = open_cube(tmp_path / "cube.npy")
    assert isinstance(cube.data, np.memmap)
    assert (cube.format, cube.band_axis, cube.wavelengths) == ("npy", 2, None)
    np.testing.assert_array_equal(_whole(cube), expected)
    np.testing.assert_array_equal(cube.read_bands([3, 0]), np.moveaxis(expected[:, :, [3, 0]], 2, 0))


def test_npy_fortran_order_and_band_axis_override(tmp_path, rng):
    expected = make_cube(rng, shape=(6, 7, 5), dtype=np.uint16)
    np.save(tmp_path / "bands_first.npy", np.asfortranarray(np.moveaxis(expected, 2, 0)))
    cube = open_cube(tmp_path / "bands_first.npy", band_axis=0)
    assert cube.provenance["fortran_order"] is True
    np.testing.assert_array_equal(_whole(cube), expected)
    np.testing.assert_array_equal(cube.read_bands([1]), expected[None, :, :, 1])


def test_npy_wavelengths_from_json_sidecar(tmp_path, rng):
    np.save(tmp_path / "scene.npy", make_cube(rng, shape=(4, 5, 3)))
    (tmp_path / "scene.json").write_text(
        json.dumps({"wavelengths": [0.5, 0.6, 0.7], "wavelength_units": "um"})
    )
    np.testing.assert_allclose(open_cube(tmp_path / "scene.npy").wavelengths, [500, 600, 700])
    (tmp_path / "scene.json").write_text(json.dumps({"wavelengths": [500, 600]}))
    cube = open_cube(tmp_path / "scene.npy")
    assert cube.wavelengths is None and "2 wavelengths for 3 bands" in cube.provenance["wavelength_note"]
    (tmp_path / "scene.json").write_text("{not json")
    assert "no usable 'wavelengths'" in open_cube(tmp_path / "scene.npy").provenance["wavelength_note"]


def test_npy_written_by_synthetic_scene_keeps_its_wavelengths(tmp_path):
    from napari_dgc.datasets.synthetic import make_leaf_scene, save_scene_npy

    scene = make_leaf_scene(rows=16, cols=16, n_bands=12)
    paths = save_scene_npy(scene, tmp_path, stem="leaf")
    cube = open_cube(paths["cube"])
    np.testing.assert_allclose(cube.wavelengths, scene.wavelengths)
    np.testing.assert_array_equal(cube.read_window(slice(None), slice(None)), scene.cube)


# ------------------------------------------------------------------ TIFF
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multipage_tiff_one_page_per_band(tmp_path, rng, compression):
    # 5 pages: tifffile would store 4 or fewer planes as the samples of a single page.
    expected = make_cube(rng, shape=(6, 7, 5), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.moveaxis(expected, 2, 0), compression=compression)
    cube = open_cube(path)
    assert (cube.format, cube.band_axis) == ("tiff", 0)
    assert isinstance(cube.data, np.memmap if compression is None else BandStack)
    np.testing.assert_array_equal(_whole(cube), expected)
    np.testing.assert_array_equal(cube.read_bands([2]), expected[None, :, :, 2])


def test_single_page_multisample_tiff_big_endian(tmp_path, rng):
    expected = make_cube(rng, shape=(5, 6, 7), dtype=np.float32)
    path = tmp_path / "samples.tiff"
    tifffile.imwrite(path, expected, photometric="minisblack", planarconfig="contig", byteorder=">")
    cube = open_cube(path)
    assert cube.band_axis == 2 and cube.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(_whole(cube), expected)


# ------------------------------------------------------------------ PNG folder
def _write_png_folder(folder: Path, cube: np.ndarray, wavelengths, name="scene") -> None:
    folder.mkdir()
    for band, wavelength in enumerate(wavelengths):
        Image.fromarray(cube[:, :, band]).save(folder / f"{name}_{wavelength}nm.png")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_folder_sorted_by_wavelength(tmp_path, rng, dtype):
    # 950 sorts after 1000 as text: the band order must follow the numbers.
    wavelengths = [950, 1000, 1100.5, 1200]
    expected = make_cube(rng, shape=(5, 8, 4), dtype=dtype)
    _write_png_folder(tmp_path / "bands", expected, wavelengths)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "bands" / "preview.png")
    cube = open_cube(tmp_path / "bands")
    assert (cube.format, cube.band_axis, cube.dtype) == ("png-folder", 0, np.dtype(dtype))
    assert isinstance(cube.data, BandStack)
    np.testing.assert_allclose(cube.wavelengths, wavelengths)
    assert cube.provenance["ignored_files"] == ["preview.png"]
    np.testing.assert_array_equal(_whole(cube), expected)
    np.testing.assert_array_equal(cube.read_window(slice(1, 3), slice(2, 7)), expected[1:3, 2:7])


def test_png_folder_reads_only_the_requested_bands(tmp_path, rng, monkeypatch):
    _write_png_folder(
        tmp_path / "bands", make_cube(rng, shape=(4, 4, 6), dtype=np.uint8), range(500, 560, 10)
    )
    cube = open_cube(tmp_path / "bands")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda fp, *a, **k: (opened.append(Path(fp).name), real_open(fp, *a, **k))[1]
    )
    cube.read_bands([4, 1])
    assert sorted(opened) == ["scene_510nm.png", "scene_540nm.png"]


@pytest.mark.skipif(not COFFEE.exists(), reason="shared data folder not present")
def test_real_hacarus_coffee_folder():
    cube = open_cube(COFFEE)
    assert (cube.shape_hw, cube.n_bands, cube.dtype) == ((256, 192), 96, np.dtype(np.uint8))
    assert (cube.wavelengths[0], cube.wavelengths[-1]) == (1293.0, 2215.0)
    last = np.asarray(Image.open(COFFEE / "coffee_2215nm.png"))
    np.testing.assert_array_equal(cube.read_bands([95])[0], last)


# ------------------------------------------------------------------ lazy array-likes
def test_axis_permuted_indexing_matches_numpy(rng):
    source = rng.normal(size=(4, 5, 6))
    view = AxisPermuted(source, (2, 0, 1))
    expected = np.transpose(source, (2, 0, 1))
    assert view.shape == expected.shape and view.ndim == 3 and view.size == expected.size
    for key in [
        (1,),
        (slice(1, 5, 2), 2),
        (Ellipsis, slice(None, None, -1)),
        ([3, 0, 3], slice(1, 3), -1),
        (-2, -1, 0),
        ([], slice(1, 3)),
        (np.array([True, False, True, False, False, True]),),
    ]:
        np.testing.assert_array_equal(view[key], expected[key])
    np.testing.assert_array_equal(np.asarray(view.transpose(1, 2, 0)), np.transpose(expected, (1, 2, 0)))
    with pytest.raises(IndexError):
        view[6]


def test_band_stack_indexing_and_cache(rng):
    planes = rng.integers(0, 255, (5, 3, 4)).astype(np.uint8)
    reads: list[int] = []
    stack = BandStack(5, (3, 4), np.uint8, lambda i: (reads.append(i), planes[i])[1], cache_bytes=24)
    np.testing.assert_array_equal(stack[1:4, 1], planes[1:4, 1])
    np.testing.assert_array_equal(stack[[4, 0], :, 2], planes[[4, 0], :, 2])
    np.testing.assert_array_equal(stack[2], planes[2])
    assert reads == [1, 2, 3, 4, 0, 2]  # the cache holds 2 bands (24 bytes): band 2 was dropped


def test_prefetch_rows_reads_ahead_the_byte_range_of_those_rows(tmp_path, monkeypatch):
    import os

    cube_values = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    np.save(tmp_path / "c.npy", cube_values)
    advised = []
    monkeypatch.setattr(
        os,
        "posix_fadvise",
        lambda fd, offset, length, advice: advised.append((offset, length, advice)),
        raising=False,
    )
    cube = open_cube(tmp_path / "c.npy")
    cube.prefetch_rows(slice(2, 4))
    row_bytes = 5 * 4 * 4
    assert advised == [(cube.data.offset + 2 * row_bytes, 2 * row_bytes, os.POSIX_FADV_WILLNEED)]
    cube.prefetch_rows(slice(5, 99))  # clipped to the image
    assert advised[-1][:2] == (cube.data.offset + 5 * row_bytes, row_bytes)
    np.testing.assert_array_equal(cube.read_window(slice(2, 4), slice(0, 5)), cube_values[2:4])


def test_prefetch_rows_does_nothing_where_rows_are_not_contiguous(tmp_path, monkeypatch):
    import os

    advised = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: advised.append(args), raising=False)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((6, 5, 30), np.float32)))
    fortran = open_cube(tmp_path / "fortran.npy")
    assert not fortran.data.flags.c_contiguous
    bands_first = Cube(
        np.lib.format.open_memmap(tmp_path / "bsq.npy", mode="w+", dtype=np.float32, shape=(30, 6, 5)),
        0,
        None,
        tmp_path / "bsq.npy",
        "npy",
    )
    in_memory = Cube(np.zeros((6, 5, 4), np.float32), 2, None, tmp_path / "x.npy", "npy")
    for cube in (fortran, bands_first, in_memory):
        cube.prefetch_rows(slice(0, 3))
    assert advised == []
