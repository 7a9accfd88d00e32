"""Hostile and malformed inputs (issue 16): one clear error naming the file, never a traceback.

Each case writes a tiny file that reproduced a traceback, a hang, a huge allocation or a read
of another file before the fix. Library calls must raise a :class:`DGCError`; the CLI must
print one line naming the file, exit with code 2 and write nothing.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
from _io_helpers import make_cube, write_envi

from napari_dgc import cli
from napari_dgc.errors import CubeFormatError, DGCError
from napari_dgc.io import describe_cube, open_cube


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def run_cli(capsys):
    """Run ``napari-dgc ARGS``; return (exit code, stdout, stderr)."""

    def run(*args: str | os.PathLike) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_one_line_error(result: tuple[int, str, str], path: Path, fragment: str) -> None:
    code, _, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err or path.name in err, err
    assert fragment in err, err


@pytest.fixture
def no_hang():
    """Fail instead of hanging forever (a FIFO opened for reading blocks until a writer comes)."""

    def expire(signum, frame):
        raise TimeoutError("the call blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- .npy headers
def _npy_with_header(path: Path, shape: tuple, payload: bytes = b"\0" * 64) -> Path:
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(payload)
    return path


@pytest.mark.parametrize("shape", [(-5, 4, 3), (4, -1, 3), (2**62, 2**62, 4), (2**40, 2**40, 2**40)], ids=str)
def test_npy_negative_or_overflowing_shape_in_header(tmp_path, run_cli, shape):
    path = _npy_with_header(tmp_path / "cube.npy", shape)
    before = _snapshot(tmp_path)
    with pytest.raises(CubeFormatError, match="cube.npy: not a valid"):
        open_cube(path)
    assert_one_line_error(run_cli("info", path), path, "not a valid")
    assert _snapshot(tmp_path) == before


def test_npy_object_dtype_is_never_unpickled(tmp_path):
    path = tmp_path / "cube.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (2, 2, 2)}
        )
        handle.write(b"\0" * 64)
    with pytest.raises(CubeFormatError, match="cube.npy: the .npy file holds Python objects"):
        open_cube(path)


# ---------------------------------------------------------------------- TIFF
def test_truncated_tiff(tmp_path, run_cli):
    path = tmp_path / "cube.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 6), np.uint16))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CubeFormatError, match="cube.tif: the TIFF is truncated"):
        open_cube(path)
    assert_one_line_error(run_cli("info", path), path, "truncated")


def test_tiff_pages_of_different_sizes_are_refused_not_dropped(tmp_path):
    path = tmp_path / "cube.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(np.zeros((5, 6), np.uint16))
        writer.write(np.zeros((7, 8), np.uint16))
        writer.write(np.zeros((5, 6), np.uint16))
    with pytest.raises(
        CubeFormatError, match=r"cube.tif: its pages differ in size or type \(3 groups: 5x6, 7x8"
    ):
        open_cube(path)


def test_compressed_single_page_tiff_is_decoded_only_when_read(tmp_path, rng):
    values = rng.integers(0, 1000, (6, 7, 5), dtype=np.uint16)
    path = tmp_path / "cube.tif"
    tifffile.imwrite(path, values, compression="zlib", photometric="minisblack", planarconfig="contig")
    cube = open_cube(path)
    assert type(cube.data).__name__ == "Deferred"  # not decoded by opening
    np.testing.assert_array_equal(cube.read_window(slice(None), slice(None)), values)


# ---------------------------------------------------------------------- PNG band folders
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A 60-byte PNG whose header claims width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    return path


def test_png_band_folder_with_a_decompression_bomb_header(tmp_path, run_cli):
    from PIL import Image

    folder = tmp_path / "bands"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(folder / "s_500nm.png")
    bomb = _png_claiming(folder / "s_600nm.png", 100_000, 100_000)  # 10^10 pixels
    with pytest.raises(CubeFormatError, match="s_600nm.png: not a readable PNG"):
        open_cube(folder)
    assert_one_line_error(run_cli("info", folder), bomb, "not a readable PNG")


# ---------------------------------------------------------------------- MATLAB
@pytest.mark.parametrize("stored", [np.inf, np.nan, -3.0, 2.5])
def test_mat_2d_matrix_whose_stored_row_count_is_not_a_count(tmp_path, stored):
    path = tmp_path / "matrix.mat"
    scipy.io.savemat(path, {"Y": np.zeros((12, 30)), "lines": stored, "cols": 5.0})
    with pytest.raises(CubeFormatError, match=r"matrix.mat: .*pass shape=\(rows, cols\)") as caught:
        open_cube(path)
    assert "say" not in str(caught.value)  # the unusable stored count is not offered as a hint


def test_mat_2d_matrix_with_usable_counts_opens_with_them(tmp_path):
    # Usable stored counts (whole, positive, product = pixels) give the shape (issue 15 item 1);
    # the unusable ones of the test above are still ignored.
    path = tmp_path / "matrix.mat"
    scipy.io.savemat(path, {"Y": np.zeros((12, 30)), "lines": 6.0, "cols": 5.0})
    cube = open_cube(path)
    assert (cube.shape_hw, cube.n_bands) == ((6, 5), 12)


def _h5(path: Path):
    import h5py

    return h5py.File(path, "w", userblock_size=512)


def test_mat73_external_raw_storage_is_refused(tmp_path, run_cli):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 8)
    path = tmp_path / "cube.mat"
    with _h5(path) as handle:
        handle.create_dataset("cube", shape=(4, 4, 4), dtype="u1", external=[(str(secret), 0, 64)])
    with pytest.raises(CubeFormatError, match="cube.mat: variable 'cube' is stored in external files"):
        open_cube(path)
    assert_one_line_error(run_cli("info", path), path, "external files")


def test_mat73_external_link_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with _h5(other) as handle:
        handle.create_dataset("cube", data=np.ones((4, 4, 4)))
    path = tmp_path / "cube.mat"
    with _h5(path) as handle:
        import h5py

        handle["cube"] = h5py.ExternalLink(str(other), "/cube")
    with pytest.raises(CubeFormatError, match="cube.mat: variable 'cube' is an HDF5 external link"):
        open_cube(path)


def test_mat73_virtual_dataset_is_refused(tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    with _h5(other) as handle:
        handle.create_dataset("cube", data=np.ones((4, 4, 4)))
    path = tmp_path / "cube.mat"
    layout = h5py.VirtualLayout(shape=(4, 4, 4), dtype="f8")
    layout[:] = h5py.VirtualSource(str(other), "cube", shape=(4, 4, 4))
    with _h5(path) as handle:
        handle.create_virtual_dataset("cube", layout)
    with pytest.raises(CubeFormatError, match="cube.mat: variable 'cube' is a virtual dataset"):
        open_cube(path)


def test_mat_v5_compressed_cube_is_not_decompressed_by_info(tmp_path, run_cli):
    # 64 MB of zeros compress to ~60 KB; info must read headers only.
    path = tmp_path / "bomb.mat"
    scipy.io.savemat(path, {"cube": np.zeros((200, 200, 200))}, do_compression=True)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        code, out, err = run_cli("info", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert "shape:       200 rows x 200 cols x 200 bands" in out
    assert peak < 8 * 2**20, f"info allocated {peak} bytes"


def _v5_file(path: Path, dims: tuple[int, ...], stated_bytes: int, payload: bytes = b"") -> Path:
    """A compressed MATLAB v5 file of one double array 'cube' whose header states ``dims``."""

    def element(kind: int, data: bytes) -> bytes:
        return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)

    flags = element(6, struct.pack("<II", 6, 0))  # mxDOUBLE_CLASS
    shape = element(5, struct.pack(f"<{len(dims)}i", *dims))
    name = element(1, b"cube")
    real = struct.pack("<II", 9, stated_bytes) + payload  # miDOUBLE
    body = flags + shape + name + real
    matrix = struct.pack("<II", 14, len(body)) + body
    compressed = zlib.compress(matrix)
    header = b"MATLAB 5.0 MAT-file, hostile test".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    path.write_bytes(header + struct.pack("<II", 15, len(compressed)) + compressed)
    return path


def test_mat_v5_variable_claiming_more_than_the_format_allows(tmp_path):
    path = _v5_file(tmp_path / "cube.mat", (20_000, 20_000, 1), 20_000 * 20_000 * 8)
    with pytest.raises(CubeFormatError, match="cube.mat: variable 'cube' claims 20000x20000x1 values"):
        open_cube(path)


def test_mat_v5_variable_whose_data_size_contradicts_its_shape(tmp_path):
    path = _v5_file(tmp_path / "cube.mat", (2, 2, 2), 10**9, payload=b"\0" * 64)
    with pytest.raises(CubeFormatError, match=r"cube.mat: not a readable MATLAB file .*states 1000000000"):
        open_cube(path)


def test_mat_v5_cube_is_read_when_first_used(tmp_path, rng):
    values = rng.random((5, 6, 4))
    path = tmp_path / "cube.mat"
    scipy.io.savemat(path, {"cube": values, "other": np.zeros((3, 3))}, do_compression=True)
    cube = open_cube(path)
    np.testing.assert_allclose(cube.read_window(slice(None), slice(None)), values.astype(np.float32))


# ---------------------------------------------------------------------- FIFOs
@pytest.mark.parametrize("name", ["cube.npy", "cube.hdr", "cube.mat"])
def test_info_on_a_fifo_is_refused_not_a_hang(tmp_path, run_cli, no_hang, name):
    path = tmp_path / name
    os.mkfifo(path)
    with pytest.raises(CubeFormatError, match=f"{name}: not a regular file"):
        open_cube(path)
    assert_one_line_error(run_cli("info", path), path, "not a regular file")


# ---------------------------------------------------------------------- ENVI headers
def test_latin1_envi_header_is_read(tmp_path, rng):
    header, _ = write_envi(
        tmp_path, make_cube(rng, shape=(3, 4, 2)), wavelengths=[0.5, 0.6], units="Micrometers"
    )
    text = header.read_text().replace("Micrometers", "µm").replace("{test cube}", "{pixel 5 µm}")
    header.write_bytes(text.encode("latin-1"))
    assert b"\xb5" in header.read_bytes()
    cube = open_cube(header)
    np.testing.assert_allclose(cube.wavelengths, [500, 600])
    assert cube.provenance["description"] == "pixel 5 µm"


def test_envi_wavelength_units_given_as_a_list(tmp_path, rng):
    header, _ = write_envi(tmp_path, make_cube(rng, shape=(3, 4, 2)), wavelengths=[500, 600], units=None)
    header.write_text(header.read_text() + "wavelength units = {nm, um}\n")
    cube = open_cube(header)
    assert cube.wavelengths is None
    assert "not a wavelength unit" in cube.provenance["wavelength_units"]


# ---------------------------------------------------------------------- wavelength sidecars
def test_npy_sidecar_nested_100000_deep(tmp_path, run_cli):
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 2), np.float32))
    (tmp_path / "cube.json").write_text("[" * 100_000 + "]" * 100_000)
    cube = open_cube(tmp_path / "cube.npy")
    assert cube.wavelengths is None
    assert "nested 100000 levels deep" in cube.provenance["wavelength_note"]
    code, out, err = run_cli("info", tmp_path / "cube.npy")
    assert code == 0 and "wavelengths: unknown" in out, err


@pytest.mark.parametrize("units", [["nm"], {"u": "nm"}, 5])
def test_npy_sidecar_with_units_that_are_not_a_string(tmp_path, units):
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 2), np.float32))
    (tmp_path / "cube.json").write_text(json.dumps({"wavelengths": [500, 600], "wavelength_units": units}))
    cube = open_cube(tmp_path / "cube.npy")
    assert cube.wavelengths is None
    assert "not a wavelength unit" in cube.provenance["wavelength_units"]


@pytest.mark.parametrize(
    "content",
    ['{"wavelengths": [1e999, 2]}', '{"wavelengths": [' + "9" * 400 + ", 2]}", "[1, 2]", '"x"', "null"],
)
def test_npy_sidecar_odd_documents_are_noted_not_fatal(tmp_path, content):
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 2), np.float32))
    (tmp_path / "cube.json").write_text(content)
    cube = open_cube(tmp_path / "cube.npy")  # never raises for a sidecar
    assert cube.n_bands == 2
    assert describe_cube(cube)


def test_error_classes_are_dgc_errors():
    assert issubclass(CubeFormatError, DGCError)


# ---------------------------------------------------------------------- LabelMe masks
def _labelme(path: Path, shapes, height=4, width=4) -> Path:
    path.write_text(json.dumps({"imageHeight": height, "imageWidth": width, "shapes": shapes}))
    return path


@pytest.mark.parametrize(
    "points",
    [
        [["a", "b"], [1, 2], [3, 4]],
        [[1], [2], [3]],
        [[True, 1], [2, 2], [3, 1]],
        [[[1, 2], [3, 4]], [1, 1], [2, 2]],
        "1,2,3",
        [[1e999, 1], [2, 2], [3, 1]],
        [[10**400, 1], [2, 2], [3, 1]],
        None,
    ],
    ids=["strings", "singles", "bool", "nested", "string", "infinite", "huge-int", "null"],
)
def test_labelme_with_non_numeric_points(tmp_path, points):
    from napari_dgc.analysis.masks import read_mask
    from napari_dgc.errors import MaskError

    path = _labelme(tmp_path / "leaf.json", [{"label": "tissue", "points": points}])
    with pytest.raises(MaskError, match="leaf.json: shape 0"):
        read_mask(path)


@pytest.mark.parametrize(
    "shapes", ["polygon", ["polygon"], [5], {"a": 1}], ids=["string", "list-of-strings", "int", "dict"]
)
def test_labelme_whose_shapes_are_strings(tmp_path, shapes):
    from napari_dgc.analysis.masks import read_mask
    from napari_dgc.errors import MaskError

    path = _labelme(tmp_path / "leaf.json", shapes)
    with pytest.raises(MaskError, match="leaf.json: "):
        read_mask(path)


@pytest.mark.parametrize(
    "size", [(10**6, 10**6), (-4, 4), (0, 4), ("4", 4), (1e999, 4), (True, 4), (2.5, 4)], ids=str
)
def test_labelme_image_size_is_checked_before_allocating(tmp_path, size):
    from napari_dgc.analysis.masks import rasterize_labelme
    from napari_dgc.errors import MaskError

    path = _labelme(tmp_path / "leaf.json", [], *size)
    with pytest.raises(MaskError, match="leaf.json: "):
        rasterize_labelme(path)  # no cube shape to compare with: the size alone is checked


def test_labelme_nested_100000_deep(tmp_path):
    from napari_dgc.analysis.masks import read_mask
    from napari_dgc.errors import MaskError

    path = tmp_path / "leaf.json"
    path.write_text('{"shapes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MaskError, match="leaf.json: JSON nested 100001 levels deep"):
        read_mask(path)


def test_label_image_npy_with_a_hostile_header(tmp_path):
    from napari_dgc.analysis.masks import read_label_image
    from napari_dgc.errors import MaskError

    path = tmp_path / "mask.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": (-1, 2**62)}
        )
        handle.write(b"\0" * 16)
    with pytest.raises(MaskError, match="mask.npy: not a valid"):
        read_label_image(path)


def test_label_image_png_decompression_bomb(tmp_path):
    from napari_dgc.analysis.masks import read_label_image
    from napari_dgc.errors import MaskError

    path = _png_claiming(tmp_path / "mask.png", 100_000, 100_000)
    with pytest.raises(MaskError, match="mask.png: cannot read the image"):
        read_label_image(path)


# ---------------------------------------------------------------------- class mappings
@pytest.mark.parametrize(
    "document",
    [
        {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": "abc", "classes": []},
        {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": 10**12, "classes": []},
        {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": 1e300, "classes": []},
        {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": 4, "classes": "background"},
        {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": 4, "classes": ["background"]},
        {
            "format": "napari-dgc-class-mapping",
            "version": 1,
            "n_clusters": 4,
            "classes": [{"name": "a", "color": "#000000", "clusters": "0123"}],
        },
        {
            "format": "napari-dgc-class-mapping",
            "version": 1,
            "n_clusters": 4,
            "classes": [{"name": "a", "color": "#000000", "clusters": [0.5, "1"]}],
        },
        {"0": "0,3", "1": [1, 2]},
        {"0": [[0]], "1": [1, 2]},
        {str(i): [] for i in range(300)},
    ],
    ids=[
        "count-text",
        "count-1e12",
        "count-float",
        "classes-string",
        "class-string",
        "clusters-string",
        "clusters-not-ints",
        "reference-string",
        "reference-nested",
        "300-classes",
    ],
)
def test_mapping_json_with_malformed_content(tmp_path, document):
    from napari_dgc.analysis.classes import ClassMapping
    from napari_dgc.errors import MappingError

    path = tmp_path / "merge.json"
    path.write_text(json.dumps(document))
    with pytest.raises(MappingError, match="merge.json: "):
        ClassMapping.load(path, n_clusters=4)


def test_mapping_json_nested_100000_deep(tmp_path):
    from napari_dgc.analysis.classes import ClassMapping
    from napari_dgc.errors import MappingError

    path = tmp_path / "merge.json"
    path.write_text('{"0": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MappingError, match="merge.json: JSON nested"):
        ClassMapping.load(path, n_clusters=4)


def test_suggest_mapping_refuses_a_huge_cluster_count_before_allocating():
    from napari_dgc.analysis.evaluation import suggest_mapping
    from napari_dgc.analysis.masks import Mask
    from napari_dgc.errors import MappingError

    clusters = {"leaf": np.zeros((2, 2), np.int64)}
    masks = {"leaf": Mask(np.zeros((2, 2), np.int32))}
    with pytest.raises(MappingError, match="between 1 and 64"):
        suggest_mapping(clusters, masks, 10**9)


# ---------------------------------------------------------------------- napari-dgc evaluate
@pytest.fixture
def evaluate_files(tmp_path):
    from PIL import Image

    labels = tmp_path / "leaf_labels.npy"
    np.save(labels, np.array([[0, 1], [1, 0]], np.int64))
    mask = tmp_path / "leaf_mask.png"
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(mask)
    return labels, mask


def test_evaluate_label_map_holding_id_1e12(tmp_path, run_cli, evaluate_files):
    labels, mask = evaluate_files
    np.save(labels, np.array([[0, 10**12], [1, 0]], np.int64))
    before = _snapshot(tmp_path)
    assert_one_line_error(run_cli("evaluate", labels, mask), labels, "holds cluster id 1000000000000")
    assert _snapshot(tmp_path) == before


def test_evaluate_n_clusters_1e9(tmp_path, run_cli, evaluate_files):
    labels, mask = evaluate_files
    code, _, err = run_cli("evaluate", labels, mask, "--n-clusters", "1000000000")
    assert code == 2 and err.count("\n") == 1 and "--n-clusters" in err and "between 1 and 64" in err, err


def test_evaluate_json_into_a_missing_folder_creates_nothing(tmp_path, run_cli, evaluate_files):
    labels, mask = evaluate_files
    target = tmp_path / "no" / "such" / "dir" / "x.json"
    before = _snapshot(tmp_path)
    code, out, err = run_cli("evaluate", labels, mask, "--json", target)
    assert code == 2 and err.count("\n") == 1, err
    assert "x.json" in err and "does not exist" in err
    assert not (tmp_path / "no").exists()
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [
        '{"0": "zero"}',
        '{"0": [' * 50_000 + "]" * 50_000 + "}",
        '{"format": "napari-dgc-class-mapping"}',
        "\xb5",
    ],
    ids=["string-ids", "deep", "no-version", "latin-1"],
)
def test_evaluate_with_a_malformed_mapping(tmp_path, run_cli, evaluate_files, content):
    labels, mask = evaluate_files
    mapping = tmp_path / "merge.json"
    mapping.write_bytes(content.encode("latin-1"))
    assert_one_line_error(run_cli("evaluate", labels, mask, "--mapping", mapping), mapping, "merge.json")


def test_evaluate_with_a_labelme_mask_whose_shapes_are_strings(tmp_path, run_cli, evaluate_files):
    labels, _ = evaluate_files
    mask = _labelme(tmp_path / "leaf.json", ["polygon", "rectangle"], 2, 2)
    assert_one_line_error(run_cli("evaluate", labels, mask), mask, "shape 0 is a str")


@pytest.mark.parametrize("which", ["labels", "mask"])
def test_evaluate_on_a_fifo_is_refused_not_a_hang(tmp_path, run_cli, evaluate_files, no_hang, which):
    labels, mask = evaluate_files
    fifo = tmp_path / ("fifo_labels.npy" if which == "labels" else "fifo_mask.png")
    os.mkfifo(fifo)
    args = (fifo, mask) if which == "labels" else (labels, fifo)
    assert_one_line_error(run_cli("evaluate", *args), fifo, "not a regular file")
