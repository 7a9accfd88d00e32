"""Issue 15 item 5 through the command line: cluster and class mean spectra as CSV.

``napari-dgc spectra`` is built by :func:`napari_dgc._cli.spectra.add_parser`; these tests give it
its own parser, so they do not depend on the sub-command's registration in ``cli.py``.
"""

from __future__ import annotations

import argparse
import csv
import io

import numpy as np
import pytest

from napari_dgc._cli import spectra
from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.errors import DGCError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="napari-dgc")
    spectra.add_parser(parser.add_subparsers())
    args = parser.parse_args(["spectra", *argv])
    return args.handler(args)


@pytest.fixture
def png_scene(tmp_path):
    from PIL import Image

    labels = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
    cube = np.stack([labels * 10 + band for band in range(4)], axis=-1).astype(np.uint16)
    cube[0, 1] += 2  # spread within cluster 0
    folder = tmp_path / "scene"
    folder.mkdir()
    for band, wavelength in enumerate((900, 950, 1000, 1050)):
        Image.fromarray(cube[:, :, band]).save(folder / f"scene_{wavelength}nm.png")
    np.save(tmp_path / "scene_labels.npy", labels)
    return folder, tmp_path / "scene_labels.npy", cube.astype(np.float64), labels


def test_spectra_csv_of_clusters_and_classes_with_wavelengths(png_scene, tmp_path, capsys):
    folder, labels_file, cube, labels = png_scene
    mapping = ClassMapping(
        [SemanticClass("sugar", "#ffffff", [0, 2]), SemanticClass("salt", "#00ffff", [1])], n_clusters=3
    )
    mapping.save(tmp_path / "merge.json")
    out = tmp_path / "spectra.csv"
    argv = [str(labels_file), str(folder), "--mapping", str(tmp_path / "merge.json"), "--out", str(out)]
    assert _run(argv) == 0
    assert "3 clusters and 2 classes x 4 bands" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == (3 + 2) * 4
    assert [r["wavelength_nm"] for r in rows[:4]] == ["900", "950", "1000", "1050"]
    for kind, ident, members in (("cluster", "0", [0]), ("cluster", "2", [2]), ("class", "1", [0, 2])):
        pixels = cube[np.isin(labels, members)]
        got = [r for r in rows if r["kind"] == kind and r["id"] == ident]
        assert int(got[0]["pixels"]) == len(pixels)
        np.testing.assert_allclose([float(r["mean"]) for r in got], pixels.mean(0))
        np.testing.assert_allclose([float(r["std"]) for r in got], pixels.std(0), atol=1e-6)
    assert {r["name"] for r in rows if r["kind"] == "class"} == {"sugar", "salt"}
    with pytest.raises(DGCError, match="exists; pass --overwrite"):
        _run(argv)
    assert _run([*argv, "--overwrite"]) == 0


def test_spectra_refuses_a_map_of_another_size_naming_both(png_scene, tmp_path):
    folder, _, _, _ = png_scene
    np.save(tmp_path / "small.npy", np.zeros((1, 3), dtype=np.uint8))
    with pytest.raises(DGCError, match=r"small.npy: the map is 1x3, the cube 2x3"):
        _run([str(tmp_path / "small.npy"), str(folder), "--out", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()
