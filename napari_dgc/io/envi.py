"""ENVI cubes: a text ``.hdr`` header plus a raw data file, memory-mapped.

The header is parsed here as :func:`spectral.io.envi.read_envi_header` does (multi-line
``{...}`` lists, comments), but bounded in size and tolerant of Latin-1 text; the data file is
located, checked against the header's size and mapped here, so every problem gets a message
naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, UnsupportedFormatError
from napari_dgc.io.bands import to_nanometres
from napari_dgc.io.cube import Cube

# Data file extensions tried next to a header, in this order, lower then upper case.
DATA_EXTENSIONS = ("", ".raw", ".img", ".dat", ".bil", ".bsq", ".bip", ".sli", ".bin", ".hyspex")

# ENVI "data type" codes napari-dgc reads (complex types 6 and 9 are not cubes of intensities).
ENVI_DTYPES = {
    1: np.uint8,
    2: np.int16,
    3: np.int32,
    4: np.float32,
    5: np.float64,
    12: np.uint16,
    13: np.uint32,
    14: np.int64,
    15: np.uint64,
}

# Memory layout of each interleave: axes of the data file and the axis holding the bands.
INTERLEAVES = {
    "bsq": (("bands", "lines", "samples"), 0),
    "bil": (("lines", "bands", "samples"), 1),
    "bip": (("lines", "samples", "bands"), 2),
}


def find_header(path: Path) -> Path | None:
    """Return the header of an ENVI data file (``name.hdr`` or ``name.ext.hdr``), or None."""
    candidates = [
        path.with_suffix(".hdr"),
        path.with_suffix(".HDR"),
        path.with_name(path.name + ".hdr"),
        path.with_name(path.name + ".HDR"),
    ]
    return next((c for c in candidates if c != path and c.is_file()), None)


def find_data_file(header: Path) -> tuple[Path | None, list[Path]]:
    """Return the data file next to ``header`` (or None) and the names that were tried."""
    stem = header.with_suffix("")
    tried = [stem.with_name(stem.name + ext) for ext in DATA_EXTENSIONS]
    tried += [stem.with_name(stem.name + ext.upper()) for ext in DATA_EXTENSIONS if ext]
    found = next((c for c in tried if c.is_file()), None)
    return found, tried


# ENVI headers are short text files (a 10,000-band wavelength list is ~100 KB); larger files
# are refused before they are read.
MAX_HEADER_BYTES = 16 * 2**20


def read_header(header: Path) -> dict:
    """Parse an ENVI header file into a dict of lower-case keys (values as strings or lists).

    The text is decoded as UTF-8, or as Latin-1 when it is not valid UTF-8 (headers written
    on Windows often hold a ``µ`` as the single byte 0xB5).

    Raises
    ------
    UnsupportedFormatError
        The file is not an ENVI header (no ``ENVI`` first line, or binary).
    CubeFormatError
        The header starts like ENVI but cannot be parsed (e.g. an unclosed ``{``), is larger
        than :data:`MAX_HEADER_BYTES`, or is not a regular file.
    """
    if not header.is_file():
        raise CubeFormatError(f"{header}: not a regular file, so it is not read as an ENVI header")
    with open(header, "rb") as handle:
        raw = handle.read(MAX_HEADER_BYTES + 1)
    if len(raw) > MAX_HEADER_BYTES:
        raise CubeFormatError(f"{header}: larger than {MAX_HEADER_BYTES} bytes; not an ENVI header")
    if b"\0" in raw:
        raise UnsupportedFormatError(f"{header}: not an ENVI header (a binary file)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte sequence decodes as Latin-1
    return parse_header_text(text, header)


def parse_header_text(text: str, source: str | Path = "ENVI header") -> dict:
    """Parse the text of an ENVI header, as :func:`spectral.io.envi.read_envi_header` does.

    Keys are lower-cased; a ``{...}`` value (possibly spanning lines) becomes a list of
    stripped strings split at commas, except ``description``, which stays one string; lines
    starting with ``;`` and lines without ``=`` are skipped.

    Parameters
    ----------
    text : str
        The whole header.
    source : str or path-like
        Named in error messages.

    Returns
    -------
    dict
        Lower-case key to string or list of strings.

    Raises
    ------
    UnsupportedFormatError
        The first line does not start with ``ENVI``.
    CubeFormatError
        A ``{`` list is never closed.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip().startswith("ENVI"):
        raise UnsupportedFormatError(f"{source}: not an ENVI header (first line is not 'ENVI')")
    fields: dict = {}
    remaining = iter(lines[1:])
    for line in remaining:
        if "=" not in line or line.startswith(";"):
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not value.startswith("{"):
            fields[key] = value
            continue
        parts = [value]
        while not parts[-1].endswith("}"):
            following = next(remaining, None)
            if following is None:
                raise CubeFormatError(
                    f"{source}: the ENVI header cannot be parsed (unclosed '{{' list in {key!r})"
                )
            if not following.startswith(";"):
                parts.append(following.strip())
        joined = "\n".join(parts)
        if key == "description":
            fields[key] = joined.strip("{}").strip()
        else:
            fields[key] = [item.strip() for item in joined[1:-1].split(",")]
    return fields


def _integer_field(header: dict, key: str, path: Path, default: int | None = None) -> int:
    if key not in header:
        if default is None:
            raise CubeFormatError(f"{path}: the ENVI header has no '{key}' field")
        return default
    try:
        return int(str(header[key]).strip())
    except ValueError:
        raise CubeFormatError(
            f"{path}: the ENVI header's '{key}' is not an integer: {header[key]!r}"
        ) from None


def open_envi(path: Path) -> Cube:
    """Open an ENVI cube from its header or its data file, memory-mapped.

    Parameters
    ----------
    path : pathlib.Path
        The ``.hdr`` file, or the data file next to it.

    Raises
    ------
    UnsupportedFormatError
        A data file without a header, or a ``.hdr`` that is not an ENVI header.
    CubeFormatError
        Missing data file, unsupported data type or interleave, size mismatch between the
        header and the data file, invalid header fields.
    """
    if path.suffix.lower() == ".hdr":
        header_path = path
        header = read_header(header_path)
        data_path, tried = find_data_file(header_path)
        if data_path is None:
            names = ", ".join(p.name for p in tried[:8])
            raise CubeFormatError(
                f"{header_path}: no ENVI data file next to this header (looked for {names}, ...)"
            )
    else:
        data_path = path
        header_path = find_header(path)
        if header_path is None:
            raise UnsupportedFormatError(f"{path}: no ENVI header (.hdr) next to this file")
        header = read_header(header_path)

    samples = _integer_field(header, "samples", header_path)
    lines = _integer_field(header, "lines", header_path)
    bands = _integer_field(header, "bands", header_path)
    offset = _integer_field(header, "header offset", header_path, default=0)
    byte_order = _integer_field(header, "byte order", header_path, default=0)
    type_code = _integer_field(header, "data type", header_path)
    if min(samples, lines, bands) < 1 or offset < 0:
        raise CubeFormatError(
            f"{header_path}: invalid size in the ENVI header (samples={samples}, lines={lines}, "
            f"bands={bands}, header offset={offset})"
        )
    if type_code not in ENVI_DTYPES:
        kind = "complex " if type_code in (6, 9) else ""
        raise CubeFormatError(
            f"{header_path}: unsupported ENVI {kind}data type {type_code} "
            f"(supported: {', '.join(str(c) for c in ENVI_DTYPES)})"
        )
    if byte_order not in (0, 1):
        raise CubeFormatError(f"{header_path}: 'byte order' must be 0 or 1, got {byte_order}")
    interleave = str(header.get("interleave", "bsq")).strip().lower()
    if interleave not in INTERLEAVES:
        raise CubeFormatError(f"{header_path}: unknown interleave {interleave!r} (expected bsq, bil or bip)")
    if "file type" in header and "spectral library" in str(header["file type"]).lower():
        raise UnsupportedFormatError(f"{header_path}: an ENVI spectral library, not an image cube")

    dtype = np.dtype(ENVI_DTYPES[type_code]).newbyteorder(">" if byte_order == 1 else "<")
    axes, band_axis = INTERLEAVES[interleave]
    sizes = {"bands": bands, "lines": lines, "samples": samples}
    shape = tuple(sizes[a] for a in axes)
    expected = offset + lines * samples * bands * dtype.itemsize
    actual = data_path.stat().st_size
    if actual != expected:
        relation = "shorter" if actual < expected else "longer"
        raise CubeFormatError(
            f"{data_path}: data file is {actual} bytes, {relation} than the {expected} bytes its "
            f"header {header_path.name} describes (offset {offset} + {lines} lines x {samples} "
            f"samples x {bands} bands x {dtype.itemsize} bytes)"
        )
    data = np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=shape)

    provenance = {
        "header": str(header_path),
        "data_file": str(data_path),
        "interleave": interleave,
        "data_type": type_code,
        "dtype": dtype.str,
        "byte_order": "big-endian" if byte_order == 1 else "little-endian",
        "header_offset": offset,
    }
    if "byte order" not in header:
        provenance["byte_order_note"] = "no 'byte order' in the header; little-endian assumed"
    for key in ("reflectance scale factor", "data ignore value", "description"):
        if key in header:
            provenance[key.replace(" ", "_")] = str(header[key])
    wavelengths = _wavelengths(header, bands, provenance)
    return Cube(
        data=data,
        band_axis=band_axis,
        wavelengths=wavelengths,
        path=header_path,
        format="envi",
        provenance=provenance,
    )


def _wavelengths(header: dict, bands: int, provenance: dict) -> np.ndarray | None:
    """Wavelengths in nm from the header; a missing or unusable list is noted, not fatal."""
    if "wavelength" not in header:
        return None
    values = header["wavelength"]
    try:
        numbers = [float(v) for v in (values if isinstance(values, list) else [values])]
    except ValueError:
        provenance["wavelength_note"] = "the header's wavelength list is not numeric: ignored"
        return None
    if len(numbers) != bands:
        provenance["wavelength_note"] = (
            f"the header lists {len(numbers)} wavelengths for {bands} bands: ignored"
        )
        return None
    wavelengths, note = to_nanometres(numbers, header.get("wavelength units"))
    provenance["wavelength_units"] = note
    return wavelengths
