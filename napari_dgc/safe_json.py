"""Read JSON files that come from users, with bounded size and nesting depth.

:func:`json.loads` recurses once per nesting level (a file of 100,000 ``[`` raises
:class:`RecursionError`), reads a file of any size into memory and blocks forever on a FIFO.
:func:`read_json` refuses all of these up front with a :class:`~napari_dgc.errors.DGCError`
(or the subclass the caller names) whose one-line message names the file and the problem, so
every reader of user JSON (wavelength sidecars, class mappings, LabelMe masks) behaves alike.

Only the standard library and :mod:`napari_dgc.errors` are imported: this module sits at the
bottom of the import layers.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

from napari_dgc.errors import DGCError

#: Largest JSON file read, in bytes (hand-written mappings, sidecars and LabelMe files are far
#: smaller; the bound keeps a hostile file from costing more memory than it is worth).
MAX_JSON_BYTES = 16 * 2**20
#: Deepest nesting of arrays and objects accepted (LabelMe needs 4, the others 3).
MAX_JSON_DEPTH = 64

# A JSON string (escapes included), matched without backtracking blow-up (unrolled loop).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def read_json(
    path: str | os.PathLike,
    *,
    error: type[DGCError] = DGCError,
    what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a user's JSON file, refusing what cannot be read safely.

    Parameters
    ----------
    path : path-like
        The file. It must be a regular file (a FIFO or device would block or never end).
    error : type of DGCError
        Exception class raised for every problem (e.g. ``MappingError`` for a mapping file).
    what : str
        What the file is meant to be, for messages ("class mapping", "LabelMe file", ...).
    max_bytes : int
        Larger files are refused without being read.
    max_depth : int
        Deeper nesting of arrays/objects is refused before parsing.

    Returns
    -------
    Any
        The parsed document (any JSON value; callers check its structure).

    Raises
    ------
    DGCError
        Of class ``error``: missing, unreadable, not a regular file, too large, not UTF-8, too
        deeply nested, or not valid JSON. The message names the file.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as failure:
        raise error(f"{path}: cannot be read ({failure.strerror or failure})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file, so it is not read as a {what}")
    if info.st_size > max_bytes:
        raise error(f"{path}: the {what} is {info.st_size} bytes; at most {max_bytes} are read")
    try:
        with open(path, "rb") as handle:
            # Read at most one byte more than allowed: the file may have grown since stat().
            raw = handle.read(max_bytes + 1)
    except OSError as failure:
        raise error(f"{path}: cannot be read ({failure.strerror or failure})") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: the {what} is larger than {max_bytes} bytes")
    return parse_json(raw, source=path, error=error, max_depth=max_depth)


def parse_json(
    data: bytes | str,
    *,
    source: str | os.PathLike = "JSON text",
    error: type[DGCError] = DGCError,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse JSON text whose nesting depth is checked before :func:`json.loads` runs.

    Parameters
    ----------
    data : bytes or str
        The document; bytes must be UTF-8 (a byte-order mark is allowed).
    source : path-like or str
        Named at the start of every message.
    error : type of DGCError
        Exception class raised for every problem.
    max_depth : int
        Deeper nesting of arrays/objects is refused.

    Returns
    -------
    Any
        The parsed document.

    Raises
    ------
    DGCError
        Of class ``error``: not UTF-8, nested deeper than ``max_depth``, or not valid JSON.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as failure:
            raise error(f"{source}: not UTF-8 text (byte {failure.start} cannot be decoded)") from None
    else:
        text = data
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"{source}: JSON nested {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(text)
    except json.JSONDecodeError as failure:
        raise error(f"{source}: not valid JSON ({failure.msg} at line {failure.lineno})") from None
    except RecursionError:  # unbalanced brackets the depth count cannot pair up
        raise error(f"{source}: JSON nested too deeply to be read") from None
    except ValueError as failure:  # e.g. an integer literal of more than 4300 digits
        raise error(f"{source}: not valid JSON ({failure})") from None


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text, counted without recursion.

    Strings are removed first, so brackets inside them do not count. Unbalanced text gets
    the depth its opening brackets reach; :func:`json.loads` reports the imbalance itself.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
