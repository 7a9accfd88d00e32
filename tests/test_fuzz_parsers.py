"""Property-based fuzzing of the parsers of user files (issue 16).

Whatever the bytes, each parser returns a valid result or raises a
:class:`~napari_dgc.errors.DGCError`; any other exception is a bug. Inputs are generated near
the valid format (so the fuzzing reaches past the first check) with hostile values mixed in.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_dgc.errors import DGCError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON values of every kind, hostile numbers included (NaN/Infinity are what json.dumps writes).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _numbers_or_junk(values):
    """A list of numbers most of the time, any JSON value otherwise."""
    return st.one_of(st.lists(values, max_size=6), json_values)


# ---------------------------------------------------------------------- shared JSON reader
@FUZZ
@given(data=st.binary(max_size=200) | st.text(alphabet='[]{}",:0123456789.eE-tfnul \\', max_size=200))
def test_parse_json_returns_a_value_or_a_dgc_error(data):
    from napari_dgc.safe_json import parse_json

    try:
        parse_json(data if isinstance(data, bytes) else data.encode())
    except DGCError:
        pass


# ---------------------------------------------------------------------- ENVI headers
envi_keys = st.sampled_from(
    [
        "samples",
        "lines",
        "bands",
        "header offset",
        "data type",
        "interleave",
        "byte order",
        "wavelength",
        "wavelength units",
        "file type",
        "description",
        "Samples",
        "",
    ]
)
envi_values = st.one_of(
    st.sampled_from(
        ["2", "3", "4", "0", "-1", "4", "12", "bsq", "bil", "bip", "1", "99", "{", "}", "{2, 3}"]
    ),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.lists(st.sampled_from(["400", "500", "nan", "1e999", "x", ""]), max_size=5).map(
        lambda v: "{" + ", ".join(v) + "}"
    ),
    st.text(max_size=10),
)
envi_lines = st.lists(
    st.one_of(st.tuples(envi_keys, envi_values).map(lambda kv: f"{kv[0]} = {kv[1]}"), st.text(max_size=15)),
    max_size=14,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(lines=envi_lines, first=st.sampled_from(["ENVI", "ENVI ", "envi", "", "\ufeffENVI"]))
def test_envi_header_text_parses_or_raises_a_dgc_error(lines, first):
    from napari_dgc.io.envi import parse_header_text

    try:
        fields = parse_header_text("\n".join([first, *lines]))
    except DGCError:
        return
    assert all(isinstance(k, str) and isinstance(v, (str, list)) for k, v in fields.items())


@FUZZ
@given(lines=envi_lines, encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_envi_open_with_a_fuzzed_header(fuzz_dir, lines, encoding):
    from napari_dgc.io import open_cube

    folder = fuzz_dir / "envi"
    folder.mkdir(exist_ok=True)
    (folder / "cube.raw").write_bytes(bytes(range(48)))  # 2 x 3 x 4 uint16 or 2 x 3 x 8 uint8 ...
    header = folder / "cube.hdr"
    header.write_bytes("\n".join(["ENVI", "data type = 1", *lines]).encode(encoding, errors="replace"))
    try:
        cube = open_cube(header)
    except DGCError:
        return
    assert cube.read_window(slice(0, 1), slice(0, 1)).shape[:2] == (1, 1)


# ---------------------------------------------------------------------- .npy headers
npy_descr = st.one_of(
    st.sampled_from(["<f4", "<u2", "|u1", ">f8", "|O", "<c8", "V8", "<M8[s]", "x", "[('a', '<f4')]"]).map(
        repr
    ),
    st.text(max_size=6),
)
npy_shape = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=6), max_size=4).map(lambda s: repr(tuple(s))),
    st.lists(st.sampled_from([2**31, 2**62, 2**64, -(2**63)]), min_size=1, max_size=3).map(
        lambda s: repr(tuple(s))
    ),
    st.text(max_size=8),
)


@FUZZ
@given(
    descr=npy_descr,
    fortran=st.sampled_from(["False", "True", "1", "'x'"]),
    shape=npy_shape,
    version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x00"]),
    payload=st.integers(min_value=0, max_value=300),
)
def test_npy_header_bytes_open_or_raise_a_dgc_error(fuzz_dir, descr, fortran, shape, version, payload):
    from napari_dgc.io import open_cube

    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}".encode(
        "latin-1", "replace"
    )
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    size = struct.pack("<H", len(text)) if version == b"\x01\x00" else struct.pack("<I", len(text))
    path = fuzz_dir / "cube.npy"
    path.write_bytes(b"\x93NUMPY" + version + size + text + b"\x01" * payload)
    try:
        cube = open_cube(path)
    except DGCError:
        return
    assert cube.read_window(slice(0, 1), slice(0, 1)).ndim == 3


@FUZZ
@given(
    sidecar=st.one_of(
        st.fixed_dictionaries(
            {"wavelengths": _numbers_or_junk(st.floats() | st.integers(-(10**400), 10**400))},
            optional={"wavelength_units": json_values | st.sampled_from(["nm", "um", "µm", "wavenumber"])},
        ),
        json_values,
    )
)
def test_npy_sidecar_json_never_breaks_opening(fuzz_dir, sidecar):
    from napari_dgc.io import open_cube

    np.save(fuzz_dir / "side.npy", np.zeros((2, 2, 3), np.float32))
    (fuzz_dir / "side.json").write_text(json.dumps(sidecar))
    cube = open_cube(fuzz_dir / "side.npy")  # a bad sidecar is noted, never fatal
    assert cube.wavelengths is None or cube.wavelengths.shape == (3,)


# ---------------------------------------------------------------------- class mappings
cluster_ids = st.one_of(st.integers(min_value=-2, max_value=6), json_scalars)
project_mappings = st.fixed_dictionaries(
    {
        "format": st.just("napari-dgc-class-mapping"),
        "version": st.sampled_from([1, 1, 1, 2, "1", None]),
        "n_clusters": st.one_of(st.integers(min_value=-1, max_value=6), st.just(10**12), json_scalars),
        "classes": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["background", "tissue", "Tissue", ""]) | json_values,
                        "color": st.sampled_from(["#808080", "#2ca02c", "red"]) | json_values,
                        "clusters": st.lists(cluster_ids, max_size=4) | json_values,
                    }
                ),
                max_size=4,
            ),
            json_values,
        ),
    }
)
reference_mappings = st.dictionaries(
    st.sampled_from(["0", "1", "2", "x", "-1", "1e9"]),
    st.lists(cluster_ids, max_size=4) | json_values,
    max_size=4,
)


@FUZZ
@given(document=st.one_of(project_mappings, reference_mappings, json_values))
def test_mapping_json_loads_or_raises_a_dgc_error(fuzz_dir, document):
    from napari_dgc.analysis.classes import ClassMapping

    path = fuzz_dir / "mapping.json"
    path.write_text(json.dumps(document))
    try:
        mapping = ClassMapping.load(path, n_clusters=4)
    except DGCError:
        return
    assert mapping.n_clusters == 4 and not mapping.unassigned_clusters()
    mapping.apply(np.arange(4).reshape(2, 2))


# ---------------------------------------------------------------------- LabelMe files
points = st.one_of(
    st.lists(
        st.lists(st.one_of(st.floats(-5, 15), st.integers(-5, 15), json_scalars), min_size=2, max_size=2),
        max_size=6,
    ),
    json_values,
)
labelme_shapes = st.fixed_dictionaries(
    {},
    optional={
        "label": st.sampled_from(["background", "tissue", "lesion", "ignore", "leaf"]) | json_values,
        "points": points,
        "shape_type": st.sampled_from(["polygon", "rectangle", "circle", None]) | json_values,
    },
)
labelme_documents = st.fixed_dictionaries(
    {},
    optional={
        "imageHeight": st.integers(min_value=-2, max_value=12) | json_scalars,
        "imageWidth": st.integers(min_value=-2, max_value=12) | json_scalars,
        "shapes": st.lists(labelme_shapes | json_values, max_size=4) | json_values,
    },
)


@FUZZ
@given(document=st.one_of(labelme_documents, json_values))
def test_labelme_json_rasterizes_or_raises_a_dgc_error(fuzz_dir, document):
    from napari_dgc.analysis.masks import IGNORE_VALUE, rasterize_labelme

    path = fuzz_dir / "leaf.json"
    path.write_text(json.dumps(document))
    try:
        mask = rasterize_labelme(path)
    except DGCError:
        return
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 1, 2, IGNORE_VALUE}
