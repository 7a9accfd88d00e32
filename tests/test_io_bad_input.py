"""Bad input: every broken or unsupported file gets an error naming the file and the problem.

Each case also checks that opening wrote nothing next to the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from _io_helpers import make_cube, write_envi, write_mat73

from napari_dgc.errors import CubeFormatError, DGCError, UnsupportedFormatError
from napari_dgc.io import open_cube
from napari_dgc.io.pseudo_rgb import pseudo_rgb


def _envi(folder: Path, **kwargs) -> tuple[Path, Path]:
    return write_envi(folder, make_cube(np.random.default_rng(0), dtype=np.int16), **kwargs)


def _missing_data_file(folder: Path) -> Path:
    header, data = _envi(folder)
    data.unlink()
    return header


def _short_data_file(folder: Path) -> Path:
    header, data = _envi(folder)
    data.write_bytes(data.read_bytes()[:-10])
    return header


def _long_data_file(folder: Path) -> Path:
    header, data = _envi(folder)
    data.write_bytes(data.read_bytes() + b"\0" * 4)
    return data  # opened through the data file this time


def _offset_not_in_data(folder: Path) -> Path:
    header, data = _envi(folder)
    header.write_text(header.read_text().replace("header offset = 0", "header offset = 512"))
    return header


def _complex_type(folder: Path) -> Path:
    return _envi(folder, type_code=6)[0]


def _unknown_type(folder: Path) -> Path:
    return _envi(folder, type_code=99)[0]


def _bad_interleave(folder: Path) -> Path:
    return _envi(folder, interleave="bsq", extra_lines=["interleave = bxx"])[0]


def _no_samples(folder: Path) -> Path:
    header, _ = _envi(folder)
    header.write_text(header.read_text().replace("samples = 9\n", ""))
    return header


def _unclosed_list(folder: Path) -> Path:
    return _envi(folder, extra_lines=["wavelength = {400, 500,"])[0]


def _empty_header(folder: Path) -> Path:
    header, _ = _envi(folder)
    header.write_bytes(b"")
    return header


def _empty_data_file(folder: Path) -> Path:
    header, data = _envi(folder)
    data.write_bytes(b"")
    return header


def _npy_truncated(folder: Path) -> Path:
    path = folder / "cube.npy"
    np.save(path, np.zeros((10, 10, 5), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    return path


def _npy_corrupt(folder: Path) -> Path:
    path = folder / "cube.npy"
    path.write_bytes(os.urandom(400))
    return path


def _npy_empty(folder: Path) -> Path:
    path = folder / "cube.npy"
    path.write_bytes(b"")
    return path


def _npy_2d(folder: Path) -> Path:
    np.save(folder / "image.npy", np.zeros((10, 10), np.float32))
    return folder / "image.npy"


def _npy_4d(folder: Path) -> Path:
    np.save(folder / "stack.npy", np.zeros((2, 4, 4, 3), np.float32))
    return folder / "stack.npy"


def _mat_truncated_v5(folder: Path) -> Path:
    path = folder / "cube.mat"
    scipy.io.savemat(path, {"cube": np.random.default_rng(0).random((20, 20, 10))})
    path.write_bytes(path.read_bytes()[:3000])
    return path


def _mat_corrupt(folder: Path) -> Path:
    path = folder / "cube.mat"
    path.write_bytes(os.urandom(3000))
    return path


def _mat_truncated_v73(folder: Path) -> Path:
    path = write_mat73(folder / "cube.mat", {"cube": np.random.default_rng(0).random((20, 20, 10))})
    path.write_bytes(path.read_bytes()[:4000])
    return path


def _mat_v73_header_only(folder: Path) -> Path:
    path = write_mat73(folder / "cube.mat", {"cube": np.zeros((2, 2, 2))})
    path.write_bytes(path.read_bytes()[:512])
    return path


def _mat_no_3d(folder: Path) -> Path:
    path = folder / "vectors.mat"
    scipy.io.savemat(path, {"spectrum": np.arange(10.0), "hypercube4d": np.zeros((2, 3, 4, 5))})
    return path


def _mat_2d_without_shape(folder: Path) -> Path:
    path = folder / "matrix.mat"
    scipy.io.savemat(path, {"Y": np.zeros((12, 30))})
    return path


def _mat_empty(folder: Path) -> Path:
    path = folder / "cube.mat"
    path.write_bytes(b"")
    return path


def _tiff_corrupt(folder: Path) -> Path:
    path = folder / "cube.tif"
    path.write_bytes(b"II*\0" + os.urandom(200))
    return path


def _tiff_4d(folder: Path) -> Path:
    path = folder / "cube.tif"
    tifffile.imwrite(path, np.zeros((2, 5, 6, 7), np.uint16), metadata={"axes": "TZYX"})
    return path


def _png_folder_mixed_sizes(folder: Path) -> Path:
    from PIL import Image

    bands = folder / "bands"
    bands.mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(bands / "s_500nm.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(bands / "s_600nm.png")
    return bands


# (builder, expected error class, fragment the message must contain)
CASES: dict[str, tuple[Callable[[Path], Path], type[DGCError], str]] = {
    "envi-missing-data-file": (_missing_data_file, CubeFormatError, "no ENVI data file next to this header"),
    "envi-data-shorter": (_short_data_file, CubeFormatError, "shorter than the"),
    "envi-data-longer": (_long_data_file, CubeFormatError, "longer than the"),
    "envi-offset-beyond-data": (_offset_not_in_data, CubeFormatError, "offset 512"),
    "envi-complex-type": (_complex_type, CubeFormatError, "unsupported ENVI complex data type 6"),
    "envi-unknown-type": (_unknown_type, CubeFormatError, "unsupported ENVI data type 99"),
    "envi-bad-interleave": (_bad_interleave, CubeFormatError, "unknown interleave 'bxx'"),
    "envi-no-samples": (_no_samples, CubeFormatError, "no 'samples' field"),
    "envi-unclosed-list": (_unclosed_list, CubeFormatError, "cannot be parsed"),
    "envi-empty-header": (_empty_header, CubeFormatError, "empty (0 bytes)"),
    "envi-empty-data": (_empty_data_file, CubeFormatError, "data file is 0 bytes"),
    "npy-truncated": (_npy_truncated, CubeFormatError, "not a valid or complete .npy"),
    "npy-corrupt": (_npy_corrupt, CubeFormatError, "not a .npy file"),
    "npy-empty": (_npy_empty, CubeFormatError, "empty (0 bytes)"),
    "npy-2d": (_npy_2d, UnsupportedFormatError, "2-D array of shape (10, 10)"),
    "npy-4d": (_npy_4d, UnsupportedFormatError, "4-D array"),
    "mat-truncated-v5": (_mat_truncated_v5, CubeFormatError, "not a readable MATLAB file"),
    "mat-corrupt": (_mat_corrupt, CubeFormatError, "not a readable MATLAB file"),
    "mat-truncated-v7.3": (_mat_truncated_v73, CubeFormatError, "truncated MATLAB v7.3"),
    "mat-v7.3-header-only": (_mat_v73_header_only, CubeFormatError, "v7.3"),
    "mat-no-3d-array": (
        _mat_no_3d,
        CubeFormatError,
        "holds no 3-D array (numeric variables: spectrum 1x10, hypercube4d 2x3x4x5)",
    ),
    "mat-2d-without-shape": (_mat_2d_without_shape, CubeFormatError, "pass shape=(rows, cols)"),
    "mat-empty": (_mat_empty, CubeFormatError, "empty (0 bytes)"),
    "tiff-corrupt": (_tiff_corrupt, CubeFormatError, "not a readable TIFF"),
    "tiff-4d": (_tiff_4d, UnsupportedFormatError, "4-D TIFF"),
    "png-folder-mixed-sizes": (_png_folder_mixed_sizes, CubeFormatError, "differs from the first band"),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_and_problem_and_writes_nothing(tmp_path, case):
    builder, error_class, fragment = CASES[case]
    path = builder(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(error_class) as caught:
        open_cube(path)
    message = str(caught.value)
    assert fragment in message
    assert path.name in message or path.stem in message, message
    assert _snapshot(tmp_path) == before


def test_missing_path(tmp_path):
    with pytest.raises(CubeFormatError, match="nope.hdr: no such file"):
        open_cube(tmp_path / "nope.hdr")


@pytest.mark.parametrize("name", ["notes.txt", "photo.png", "data.raw"])
def test_unhandled_files_are_unsupported(tmp_path, name):
    (tmp_path / name).write_bytes(b"1234")
    with pytest.raises(UnsupportedFormatError, match=name):
        open_cube(tmp_path / name)


def test_permission_denied_is_reported_with_the_file(tmp_path, monkeypatch):
    # Root reads files whatever their mode, so the denial is simulated where the file opens.
    header, data = _envi(tmp_path)

    def deny(filename, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(filename))

    monkeypatch.setattr(np, "memmap", deny)
    with pytest.raises(CubeFormatError, match=rf"{data.name}: cannot be read \(permission denied\)"):
        open_cube(header)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (simulated in the test above)")
def test_unreadable_file_permissions(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, np.zeros((3, 3, 3), np.float32))
    path.chmod(0)
    try:
        with pytest.raises(CubeFormatError, match=r"cube.npy: cannot be read \(permission denied\)"):
            open_cube(path)
    finally:
        path.chmod(0o644)


def test_nan_and_inf_are_found_by_check_finite_not_at_open(tmp_path, rng):
    cube_values = make_cube(rng, shape=(6, 7, 5))
    cube_values[2, 3, 1] = np.nan
    cube_values[5, 0, 4] = np.inf
    header, _ = write_envi(tmp_path, cube_values, interleave="bil")
    cube = open_cube(header)  # opening reads no values, so it cannot fail here
    with pytest.raises(
        CubeFormatError, match=r"scene.hdr: 2 NaN or infinite value\(s\).*row 2, column 3, band 1"
    ):
        cube.check_finite()
    rgb = pseudo_rgb(cube)
    assert np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1


def test_check_finite_passes_clean_float_and_integer_cubes(tmp_path, rng):
    for dtype in (np.float32, np.uint16):
        header, _ = write_envi(tmp_path / np.dtype(dtype).name, make_cube(rng, dtype=dtype))
        open_cube(header).check_finite()
