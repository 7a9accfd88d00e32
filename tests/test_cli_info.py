"""``napari-dgc info``: what it prints for each format and how it reports bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from _io_helpers import make_cube, write_envi

from napari_dgc import cli


@pytest.fixture
def run_info(monkeypatch, capsys):
    # Only the info sub-command is registered, so this test does not depend on the others.
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("info",))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["info", *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_info_envi(run_info, tmp_path, rng):
    header, data = write_envi(
        tmp_path,
        make_cube(rng, shape=(7, 9, 5), dtype=np.uint16),
        interleave="bil",
        byte_order=1,
        wavelengths=[0.4, 0.5, 0.6, 0.7, 0.8],
        units="Micrometers",
    )
    code, out, err = run_info(header)
    assert code == 0 and err == ""
    assert f"path:        {header}" in out
    assert "format:      envi" in out
    assert "shape:       7 rows x 9 cols x 5 bands" in out
    assert "dtype:       uint16 (>u2)" in out
    assert "bands:       5 on axis 1 of (7, 5, 9), interleave BIL" in out
    assert "wavelengths: 400.0-800.0 nm (mean step 100.00 nm)" in out
    assert "data size:   630 B" in out
    assert f"on disk:     {header.stat().st_size + data.stat().st_size} B" in out


def test_info_mat_key_and_shape(run_info, tmp_path, rng):
    values = make_cube(rng, shape=(4, 6, 5)).astype(np.float64)
    path = tmp_path / "unmixing.mat"
    scipy.io.savemat(
        path, {"Y": values.reshape(24, 5, order="F").T, "other": make_cube(rng, shape=(4, 5, 3))}
    )
    code, out, err = run_info(path)
    assert code == 2 and out == ""
    assert err.startswith("napari-dgc info: error: ") and "unmixing.mat" in err and "--shape ROWS COLS" in err
    code, out, _ = run_info(path, "--shape", 4, 6)
    assert code == 0
    assert "key:         Y" in out and "shape:       4 rows x 6 cols x 5 bands" in out
    assert "column-major" in out and "wavelengths: unknown" in out
    code, out, _ = run_info(path, "--key", "other")
    assert code == 0 and "key:         other" in out and "4 rows x 5 cols x 3 bands" in out


def test_info_npy_reports_sizes_in_mib(run_info, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((64, 64, 100), np.float32))
    code, out, _ = run_info(tmp_path / "big.npy")
    assert code == 0
    assert "format:      npy" in out and "dtype:       float32 (<f4)" in out
    assert "data size:   1.6 MiB (1638400 bytes)" in out


def test_info_bad_input_exits_2_naming_the_file(run_info, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, out, err = run_info(tmp_path / "notes.txt")
    assert code == 2 and out == ""
    assert "notes.txt: not a hyperspectral cube format" in err
    code, _, err = run_info(tmp_path / "missing.hdr")
    assert code == 2 and "missing.hdr: no such file or folder" in err
