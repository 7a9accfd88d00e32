"""MATLAB .mat cubes: v5 and v7.3, band-axis decision, keys, 2-D matrices with a shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from _io_helpers import make_cube, write_mat73

from napari_dgc.errors import CubeFormatError
from napari_dgc.io import open_cube
from napari_dgc.io.lazy import LazyArray

SHARED = Path("/work/shared/data")
SAMSON = SHARED / "samson" / "Samson.mat"
MUUFL = SHARED / "gatorsense_muufl_subsets"


def _whole(cube) -> np.ndarray:
    return cube.read_window(slice(None), slice(None))


def test_v5_band_last_with_wavelengths(tmp_path, rng):
    expected = make_cube(rng, shape=(6, 8, 5))
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"cube": expected, "wavelengths": np.linspace(450, 850, 5)[:, None]})
    cube = open_cube(path)
    assert (cube.format, cube.band_axis, cube.provenance["key"]) == ("mat", 2, "cube")
    np.testing.assert_allclose(cube.wavelengths, np.linspace(450, 850, 5))
    np.testing.assert_array_equal(_whole(cube), expected)


def test_v5_band_axis_from_wavelength_length_beats_shortest_axis(tmp_path, rng):
    # Bands first and more bands than rows: only the wavelength vector can tell.
    expected = make_cube(rng, shape=(4, 6, 12))
    path = tmp_path / "bands_first.mat"
    scipy.io.savemat(path, {"hsi": np.moveaxis(expected, 2, 0), "wl": np.linspace(0.4, 0.9, 12)})
    cube = open_cube(path)
    assert cube.band_axis == 0
    assert "wavelength vector" in cube.provenance["band_axis_reason"]
    np.testing.assert_allclose(cube.wavelengths, np.linspace(400, 900, 12))  # micrometres -> nm
    np.testing.assert_array_equal(_whole(cube), expected)


def test_v5_without_wavelengths_uses_the_shortest_axis(tmp_path, rng):
    expected = make_cube(rng, shape=(9, 10, 4))
    path = tmp_path / "plain.mat"
    scipy.io.savemat(path, {"img": np.transpose(expected, (0, 2, 1))})  # rows, bands, cols
    cube = open_cube(path)
    assert cube.band_axis == 1 and cube.wavelengths is None
    assert "shortest axis" in cube.provenance["band_axis_reason"]
    np.testing.assert_array_equal(_whole(cube), expected)


def test_v5_largest_3d_array_by_default_and_key_selects_another(tmp_path, rng):
    big, small = make_cube(rng, shape=(8, 8, 6)), make_cube(rng, shape=(4, 4, 3))
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"small": small, "big": big})
    np.testing.assert_array_equal(_whole(open_cube(path)), big)
    np.testing.assert_array_equal(_whole(open_cube(path, key="small")), small)
    with pytest.raises(CubeFormatError, match="no numeric variable 'missing'.*big 8x8x6"):
        open_cube(path, key="missing")


def test_v5_band_axis_override(tmp_path, rng):
    expected = make_cube(rng, shape=(5, 6, 7))
    path = tmp_path / "override.mat"
    scipy.io.savemat(path, {"cube": np.moveaxis(expected, 2, 0)})
    cube = open_cube(path, band_axis=0)
    assert cube.provenance["band_axis_reason"] == "given by the caller"
    np.testing.assert_array_equal(_whole(cube), expected)


@pytest.mark.parametrize("orientation", ["bands_x_pixels", "pixels_x_bands"])
def test_2d_matrix_with_shape_is_column_major(tmp_path, rng, orientation):
    expected = make_cube(rng, shape=(4, 6, 5))
    pixels_by_bands = expected.reshape(4 * 6, 5, order="F")  # MATLAB pixel order
    matrix = pixels_by_bands.T if orientation == "bands_x_pixels" else pixels_by_bands
    path = tmp_path / "unmixing.mat"
    # Stored counts that do not fit the matrix are only named in the error, never used.
    scipy.io.savemat(path, {"Y": matrix, "lines": 3, "cols": 6})
    with pytest.raises(
        CubeFormatError, match=r"2-D .* matrix.*shape=\(rows, cols\).*'lines' and 'cols' say \(3, 6\)"
    ):
        open_cube(path)
    cube = open_cube(path, shape=(4, 6))
    assert "column-major" in cube.provenance["band_axis_reason"]
    assert cube.provenance["shape_source"] == "given by the caller"
    np.testing.assert_array_equal(_whole(cube), expected)
    with pytest.raises(CubeFormatError, match="5 x 5 = 25 pixels"):
        open_cube(path, shape=(5, 5))


@pytest.mark.parametrize("names", [("lines", "cols"), ("nRow", "nCol")])
def test_2d_matrix_opens_with_the_row_and_column_counts_it_stores(tmp_path, rng, names):
    """Issue 15 item 1: a Samson-like file stores its 95 x 95; no --shape is needed."""
    expected = make_cube(rng, shape=(4, 6, 5))
    matrix = expected.reshape(4 * 6, 5, order="F").T
    path = tmp_path / "samson_like.mat"
    scipy.io.savemat(path, {"V": matrix, names[0]: 4, names[1]: 6, "nBand": 5})
    cube = open_cube(path)
    assert (cube.shape_hw, cube.n_bands, cube.provenance["key"]) == ((4, 6), 5, "V")
    assert cube.provenance["pixel_shape"] == [4, 6]
    assert cube.provenance["shape_source"] == f"stored in the file as {names[0]!r} and {names[1]!r}"
    np.testing.assert_array_equal(_whole(cube), expected)
    # A given shape still wins, and must fit.
    np.testing.assert_array_equal(_whole(open_cube(path, key="V", shape=(4, 6))), expected)
    with pytest.raises(CubeFormatError, match="3 x 3 = 9 pixels"):
        open_cube(path, shape=(3, 3))


@pytest.mark.parametrize("rows", [0, -4, 2.5, np.inf, np.nan])
def test_stored_counts_that_are_not_whole_positive_numbers_are_not_used(tmp_path, rng, rows):
    matrix = make_cube(rng, shape=(4, 6, 5)).reshape(24, 5, order="F").T
    path = tmp_path / "odd_counts.mat"
    scipy.io.savemat(path, {"Y": matrix, "lines": rows, "cols": 6})
    with pytest.raises(CubeFormatError, match=r"pass shape=\(rows, cols\)"):
        open_cube(path)


def test_shape_given_for_a_3d_variable_is_an_error(tmp_path, rng):
    path = tmp_path / "cube.mat"
    scipy.io.savemat(path, {"cube": make_cube(rng)})
    with pytest.raises(CubeFormatError, match="already 3-D"):
        open_cube(path, key="cube", shape=(7, 9))


def test_v73_is_read_lazily_with_matlab_axis_order(tmp_path, rng):
    expected = make_cube(rng, shape=(6, 7, 5))
    path = write_mat73(
        tmp_path / "v73.mat", {"cube": expected, "wavelengths": np.linspace(500, 900, 5)[:, None]}
    )
    cube = open_cube(path)
    assert cube.format == "mat-v7.3"
    assert isinstance(cube.data, LazyArray)
    assert cube.data.shape == (6, 7, 5) and cube.band_axis == 2
    np.testing.assert_allclose(cube.wavelengths, np.linspace(500, 900, 5))
    np.testing.assert_array_equal(_whole(cube), expected)
    np.testing.assert_array_equal(cube.read_window(slice(2, 5), slice(1, 3)), expected[2:5, 1:3])
    np.testing.assert_array_equal(cube.read_bands([4, 1]), np.moveaxis(expected[:, :, [4, 1]], 2, 0))
    np.testing.assert_array_equal(np.asarray(cube.bands_first()), np.moveaxis(expected, 2, 0))


def test_v73_2d_matrix_with_shape(tmp_path, rng):
    expected = make_cube(rng, shape=(3, 5, 4)).astype(np.float64)
    matrix = expected.reshape(15, 4, order="F").T
    path = write_mat73(tmp_path / "v73_matrix.mat", {"Y": matrix})
    with pytest.raises(CubeFormatError, match="shape"):
        open_cube(path)
    np.testing.assert_array_equal(_whole(open_cube(path, shape=(3, 5))), expected)


@pytest.mark.skipif(not SAMSON.exists(), reason="shared data folder not present")
def test_real_samson_opens_with_its_stored_shape_and_is_column_major():
    cube = open_cube(SAMSON)  # the file stores lines = cols = 95
    assert (cube.shape_hw, cube.n_bands) == ((95, 95), 156)
    assert cube.provenance["shape_source"] == "stored in the file as 'lines' and 'cols'"
    y = scipy.io.loadmat(SAMSON)["Y"]
    reference = y.T.reshape(95, 95, 156, order="F")  # the data set's README
    np.testing.assert_allclose(_whole(cube), reference.astype(np.float32))
    np.testing.assert_allclose(_whole(open_cube(SAMSON, shape=(95, 95))), reference.astype(np.float32))
    with pytest.raises(CubeFormatError, match=r"Samson\.mat: no 2-D matrix has 90 x 95 = 8550 pixels"):
        open_cube(SAMSON, shape=(90, 95))


@pytest.mark.skipif(not MUUFL.exists(), reason="shared data folder not present")
@pytest.mark.parametrize(
    "name, key, shape",
    [
        ("an_hsi_image_sub_for_demo.mat", "hsi_img_sub", (51, 88)),
        ("an_hsi_img_for_tgt_det_demo.mat", "hsi_sub", (36, 36)),
    ],
)
def test_real_muufl_subsets(name, key, shape):
    cube = open_cube(MUUFL / name)
    assert (cube.provenance["key"], cube.shape_hw, cube.n_bands, cube.band_axis) == (key, shape, 72, 2)
    assert cube.wavelengths.min() == pytest.approx(367.7, abs=0.05)
    assert cube.wavelengths.max() == pytest.approx(1043.4, abs=0.05)
    np.testing.assert_array_equal(_whole(cube), scipy.io.loadmat(MUUFL / name)[key])
