"""ENVI reading: every interleave, data type, byte order, header offset, file naming, units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _io_helpers import INTERLEAVE_AXES, make_cube, write_envi

from napari_dgc.io import open_cube

SHARED = Path("/work/shared/data")
CORN_SHARED = SHARED / "plantcv_corn_kernel" / "corn-kernel-hyperspectral.hdr"
GRID_SHARED = SHARED / "microplastics_grid_nir" / "grid.hdr"
CORN_RESOURCE = Path(__file__).parent.parent / "resources" / "corn_kernel" / "corn-kernel-hyperspectral.hdr"

DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64, np.uint16, np.uint32, np.int64, np.uint64]


def _assert_reads(cube, expected: np.ndarray) -> None:
    """Whole-cube, window and band reads all agree with the band-last ``expected``."""
    assert cube.shape_hw == expected.shape[:2]
    assert cube.n_bands == expected.shape[2]
    np.testing.assert_array_equal(cube.read_window(slice(None), slice(None)), expected.astype(np.float32))
    np.testing.assert_array_equal(
        cube.read_window(slice(1, 4), slice(2, 8, 2)), expected[1:4, 2:8:2].astype(np.float32)
    )
    picked = [expected.shape[2] - 1, 0, 2]
    np.testing.assert_array_equal(
        cube.read_bands(picked), np.moveaxis(expected[:, :, picked], 2, 0).astype(np.float32)
    )
    np.testing.assert_array_equal(np.asarray(cube.bands_first()), np.moveaxis(expected, 2, 0))


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("byte_order", [0, 1], ids=["little", "big"])
def test_interleave_dtype_byte_order(tmp_path, rng, interleave, dtype, byte_order):
    expected = make_cube(rng, dtype=dtype)
    header, _ = write_envi(tmp_path, expected, interleave=interleave, byte_order=byte_order)
    cube = open_cube(header)
    assert cube.format == "envi"
    assert isinstance(cube.data, np.memmap)  # lazy: nothing read at open
    assert cube.band_axis == {"bsq": 0, "bil": 1, "bip": 2}[interleave]
    assert cube.data.shape == tuple(expected.shape[a] for a in INTERLEAVE_AXES[interleave])
    assert cube.dtype == np.dtype(dtype).newbyteorder(">" if byte_order else "<")
    assert cube.provenance["interleave"] == interleave
    assert cube.provenance["byte_order"] == ("big-endian" if byte_order else "little-endian")
    _assert_reads(cube, expected)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_matches_spectral_python(tmp_path, rng, interleave):
    # An independent reader of the same file must see the same cube.
    from spectral.io import envi

    expected = make_cube(rng, shape=(6, 5, 4), dtype=np.int16)
    header, data = write_envi(tmp_path, expected, interleave=interleave, byte_order=1, offset=64)
    reference = envi.open(str(header), str(data)).load()
    ours = open_cube(header).read_window(slice(None), slice(None))
    np.testing.assert_array_equal(ours, np.asarray(reference, dtype=np.float32))


def test_header_offset(tmp_path, rng):
    expected = make_cube(rng, dtype=np.uint16)
    header, _ = write_envi(tmp_path, expected, interleave="bil", offset=1000)
    cube = open_cube(header)
    assert cube.provenance["header_offset"] == 1000
    _assert_reads(cube, expected)


@pytest.mark.parametrize("suffix", [".raw", ".img", ".dat", ".bil", ".bsq", ".bip", "", ".RAW"])
def test_data_file_names_and_opening_by_data_file(tmp_path, rng, suffix):
    expected = make_cube(rng)
    header, data = write_envi(tmp_path, expected, data_suffix=suffix)
    for path in (header, data):
        cube = open_cube(path)
        assert cube.path == header
        assert Path(cube.provenance["data_file"]) == data
        _assert_reads(cube, expected)


def test_header_named_after_data_file(tmp_path, rng):
    expected = make_cube(rng)
    header, data = write_envi(tmp_path, expected, data_suffix=".img", header_name="scene.img.hdr")
    assert open_cube(header).provenance["data_file"] == str(data)
    assert open_cube(data).path == header


@pytest.mark.parametrize(
    "units, given, expected_nm",
    [
        ("Nanometers", [400, 500, 600, 700, 800], [400, 500, 600, 700, 800]),
        ("nm", [400.5, 500, 600, 700, 800], [400.5, 500, 600, 700, 800]),
        ("Micrometers", [0.4, 0.5, 0.6, 0.7, 0.8], [400, 500, 600, 700, 800]),
        ("um", [1.0, 1.1, 1.2, 1.3, 1.4], [1000, 1100, 1200, 1300, 1400]),
        ("µm", [1.0, 1.1, 1.2, 1.3, 1.4], [1000, 1100, 1200, 1300, 1400]),
        (None, [0.4, 0.5, 0.6, 0.7, 0.8], [400, 500, 600, 700, 800]),
        ("Unknown", [400, 500, 600, 700, 800], [400, 500, 600, 700, 800]),
        ("Wavenumber", [25000, 20000, 12500, 10000, 5000], [400, 500, 800, 1000, 2000]),
    ],
)
def test_wavelength_units(tmp_path, rng, units, given, expected_nm):
    header, _ = write_envi(tmp_path, make_cube(rng), wavelengths=given, units=units)
    cube = open_cube(header)
    np.testing.assert_allclose(cube.wavelengths, expected_nm)
    assert cube.wavelengths.dtype == np.float64


def test_wavelength_list_of_wrong_length_is_ignored_with_a_note(tmp_path, rng):
    header, _ = write_envi(tmp_path, make_cube(rng), wavelengths=[400, 500, 600])
    cube = open_cube(header)
    assert cube.wavelengths is None
    assert "3 wavelengths for 5 bands" in cube.provenance["wavelength_note"]


def test_missing_byte_order_defaults_to_little_endian(tmp_path, rng):
    expected = make_cube(rng, dtype=np.uint16)
    header, _ = write_envi(tmp_path, expected)
    header.write_text(
        "\n".join(line for line in header.read_text().splitlines() if not line.startswith("byte order"))
    )
    cube = open_cube(header)
    assert "little-endian assumed" in cube.provenance["byte_order_note"]
    _assert_reads(cube, expected)


def _check_corn(header: Path) -> None:
    cube = open_cube(header)
    assert (cube.shape_hw, cube.n_bands, cube.band_axis) == ((31, 43), 580, 1)
    assert cube.dtype == np.dtype("<u2")
    assert cube.wavelengths[0] == pytest.approx(366.551) and cube.wavelengths[-1] == pytest.approx(
        1048.4, abs=0.1
    )
    raw = np.fromfile(header.with_suffix(".raw"), "<u2").reshape(31, 580, 43).transpose(0, 2, 1)
    np.testing.assert_array_equal(cube.read_window(slice(None), slice(None)), raw)


@pytest.mark.skipif(not CORN_SHARED.exists(), reason="shared data folder not present")
def test_real_corn_kernel_bil_uint16_shared():
    _check_corn(CORN_SHARED)


@pytest.mark.skipif(
    not CORN_RESOURCE.exists(), reason="resources/corn_kernel not added to the repository yet"
)
def test_real_corn_kernel_bil_uint16_resource():
    _check_corn(CORN_RESOURCE)


@pytest.mark.skipif(not GRID_SHARED.exists(), reason="shared data folder not present")
def test_real_microplastics_grid_dat():
    cube = open_cube(GRID_SHARED)
    assert (cube.shape_hw, cube.n_bands) == ((20, 20), 256)
    assert Path(cube.provenance["data_file"]).name == "grid.dat"
    assert cube.wavelengths.min() == pytest.approx(962.4, abs=0.1)
    assert cube.wavelengths.max() == pytest.approx(2492.5, abs=0.1)
    raw = np.fromfile(GRID_SHARED.with_suffix(".dat"), "<u2").reshape(20, 256, 20).transpose(0, 2, 1)
    np.testing.assert_array_equal(cube.read_window(slice(None), slice(None)), raw)
