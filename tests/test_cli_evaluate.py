"""Tests of ``napari-dgc evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_dgc.cli import main

TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 255, 1, 1]], dtype=np.uint8)
CLUSTERS = np.array([[0, 0, 1, 2], [0, 3, 2, 2], [0, 0, 2, 2], [1, 1, 2, 1]], dtype=np.int32)


@pytest.fixture
def files(tmp_path):
    labels = tmp_path / "leaf_labels.npy"
    mask = tmp_path / "leaf_mask.png"
    np.save(labels, CLUSTERS)
    Image.fromarray(TRUTH).save(mask)
    mapping = tmp_path / "merge.json"
    mapping.write_text(json.dumps({"0": [0, 3], "1": [1, 2]}))
    return labels, mask, mapping


def test_evaluate_with_a_mapping_prints_and_exports_iou(files, tmp_path, capsys):
    labels, mask, mapping = files
    out_json, out_csv = tmp_path / "iou.json", tmp_path / "iou.csv"
    code = main(
        [
            "evaluate",
            str(labels),
            str(mask),
            "--mapping",
            str(mapping),
            "--n-clusters",
            "4",
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "0.8571" in printed and "0.8889" in printed  # 6/7 and 8/9
    report = json.loads(out_json.read_text())
    assert report["pooled"]["mean_iou"] == pytest.approx((6 / 7 + 8 / 9) / 2)
    assert report["mapping_source"] == str(mapping)
    assert "leaf,background,0.857143" in out_csv.read_text()


def test_evaluate_without_mapping_says_it_uses_a_suggestion(files, capsys):
    labels, mask, _ = files
    assert main(["evaluate", str(labels), str(mask)]) == 0
    printed = capsys.readouterr().out
    assert "suggested many-to-one mapping" in printed
    assert "background: clusters 0, 3" in printed


def test_evaluate_pairs_folders_by_stem(tmp_path, capsys):
    (tmp_path / "labels").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        np.save(tmp_path / "labels" / f"{name}_labels.npy", CLUSTERS)
        np.save(tmp_path / "masks" / f"{name}.npy", TRUTH)
    assert (
        main(["evaluate", str(tmp_path / "labels"), str(tmp_path / "masks"), "--suggest", "hungarian"]) == 0
    )
    printed = capsys.readouterr().out
    assert "pooled" in printed and "suggested hungarian" in printed


def bad(capsys, argv) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    return error


def test_bad_inputs_exit_non_zero_with_one_line(files, tmp_path, capsys):
    labels, mask, mapping = files
    wrong_shape = tmp_path / "small.npy"
    np.save(wrong_shape, TRUTH[:3])
    assert "differs from the cube's" in bad(capsys, ["evaluate", str(labels), str(wrong_shape)])
    unknown = tmp_path / "unknown.npy"
    np.save(unknown, np.full((4, 4), 7))
    named = ["--mask-classes", "background,tissue,lesion"]
    assert "unknown mask value(s) 7" in bad(capsys, ["evaluate", str(labels), str(unknown), *named])
    np.save(unknown, np.full((4, 4), 256))
    assert "mask value(s) 256 out of range" in bad(capsys, ["evaluate", str(labels), str(unknown)])
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"0": [0], "1": [1, 2]}))
    assert "[3]" in bad(capsys, ["evaluate", str(labels), str(mask), "--mapping", str(missing)])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"0": [0, 3, 9], "1": [1, 2]}))
    assert "cluster 9" in bad(
        capsys, ["evaluate", str(labels), str(mask), "--mapping", str(foreign), "--n-clusters", "4"]
    )
    labelme = tmp_path / "leaf.json"
    labelme.write_text(json.dumps({"imageHeight": 5, "imageWidth": 4, "shapes": []}))
    assert "5x4 image" in bad(capsys, ["evaluate", str(labels), str(labelme)])


def test_existing_outputs_are_kept_without_overwrite(files, tmp_path, capsys):
    labels, mask, mapping = files
    out_csv = tmp_path / "iou.csv"
    out_csv.write_text("mine")
    assert "--overwrite" in bad(capsys, ["evaluate", str(labels), str(mask), "--csv", str(out_csv)])
    assert out_csv.read_text() == "mine"
    assert main(["evaluate", str(labels), str(mask), "--csv", str(out_csv), "--overwrite"]) == 0
    assert out_csv.read_text().startswith("cube,class,iou")


def test_evaluate_scores_four_named_classes_and_a_class_map_as_mask(tmp_path, capsys):
    """Issue 15 item 2: values 1-4 with names; a class map (segment --classes) reused as a mask."""
    from napari_dgc.analysis.classes import ClassMapping, SemanticClass
    from napari_dgc.analysis.export import write_class_map

    truth = np.array([[0, 1, 2], [3, 4, 4], [0, 255, 1]], dtype=np.uint8)
    clusters = np.array([[4, 0, 1], [2, 3, 3], [4, 0, 0]], dtype=np.int32)
    np.save(tmp_path / "scene_labels.npy", clusters)
    Image.fromarray(truth).save(tmp_path / "scene_mask.png")
    names = "background,sugar,flour,salt,eraser"
    code = main(
        [
            "evaluate",
            str(tmp_path / "scene_labels.npy"),
            str(tmp_path / "scene_mask.png"),
            "--mask-classes",
            names,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for name in names.split(","):
        assert name in out
    assert "1.0000" in out  # the suggested one-to-one mapping recovers every class

    mapping = ClassMapping(
        [
            SemanticClass(name, "#000000", [cluster])
            for name, cluster in zip(names.split(","), [4, 0, 1, 2, 3])
        ],
        n_clusters=5,
    )
    mapping.save(tmp_path / "merge.json")
    write_class_map(tmp_path / "reference_classes.png", mapping.apply(clusters), mapping)
    code = main(
        [
            "evaluate",
            str(tmp_path / "scene_labels.npy"),
            str(tmp_path / "reference_classes.png"),
            "--mapping",
            str(tmp_path / "merge.json"),
        ]
    )
    assert code == 0
    assert "mean IoU" in capsys.readouterr().out
