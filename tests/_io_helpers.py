"""Writers of small cube files for the I/O tests (ENVI, MATLAB v5 / v7.3), written by hand.

They do not use napari-dgc's readers, so the tests compare the readers against independently
produced files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

ENVI_TYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float32): 4,
    np.dtype(np.float64): 5,
    np.dtype(np.uint16): 12,
    np.dtype(np.uint32): 13,
    np.dtype(np.int64): 14,
    np.dtype(np.uint64): 15,
}
# Order of the file's axes, given a band-last (rows, cols, bands) cube.
INTERLEAVE_AXES = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}


def make_cube(rng: np.random.Generator, shape=(7, 9, 5), dtype=np.float32) -> np.ndarray:
    """A band-last random cube whose values fit ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(100.0, 30.0, shape).astype(dtype)
    high = min(np.iinfo(dtype).max, 60000)
    low = max(np.iinfo(dtype).min, -30000)
    return rng.integers(low, high, shape, endpoint=True).astype(dtype)


def write_envi(
    folder: Path,
    cube: np.ndarray,
    *,
    name: str = "scene",
    interleave: str = "bsq",
    byte_order: int = 0,
    offset: int = 0,
    data_suffix: str = ".raw",
    header_name: str | None = None,
    wavelengths: Sequence[float] | None = None,
    units: str | None = "Nanometers",
    type_code: int | None = None,
    extra_lines: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write a band-last cube as an ENVI header + data file; return (header, data file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols, bands = cube.shape
    stored = np.transpose(cube, INTERLEAVE_AXES[interleave])
    data_path = folder / f"{name}{data_suffix}"
    with open(data_path, "wb") as handle:
        handle.write(b"\0" * offset)
        handle.write(stored.astype(cube.dtype.newbyteorder(">" if byte_order else "<")).tobytes())
    lines = [
        "ENVI",
        "description = {test cube}",
        f"samples = {cols}",
        f"lines = {rows}",
        f"bands = {bands}",
        f"header offset = {offset}",
        "file type = ENVI Standard",
        f"data type = {type_code if type_code is not None else ENVI_TYPE_CODES[cube.dtype]}",
        f"interleave = {interleave}",
        f"byte order = {byte_order}",
    ]
    if wavelengths is not None:
        lines.append("wavelength = {\n " + ",\n ".join(f"{w:g}" for w in wavelengths) + "}")
        if units is not None:
            lines.append(f"wavelength units = {units}")
    lines.extend(extra_lines)
    header_path = folder / (header_name or f"{name}.hdr")
    header_path.write_text("\n".join(lines) + "\n")
    return header_path, data_path


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> Path:
    """Write arrays as MATLAB v7.3 would: HDF5 with a 512-byte header and reversed axes."""
    import h5py

    classes = {"f8": "double", "f4": "single", "u1": "uint8", "u2": "uint16", "i2": "int16", "i4": "int32"}
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            value = np.asarray(value)
            dataset = handle.create_dataset(name, data=np.transpose(value))
            dataset.attrs["MATLAB_class"] = np.bytes_(classes[value.dtype.str[1:]])
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    )
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    return path
