"""Tests of napari_dgc.analysis.evaluation against hand-computed IoU values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.analysis.evaluation import evaluate_classes, suggest_mapping, write_report
from napari_dgc.analysis.masks import Mask
from napari_dgc.errors import MappingError, MaskError

# Truth: left half background, right half tissue, one ignored pixel.
TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 255, 1, 1]])
CLUSTERS = np.array([[0, 0, 1, 2], [0, 3, 2, 2], [0, 0, 2, 2], [1, 1, 2, 1]])


def mapping(background=(0, 3), tissue=(1, 2)) -> ClassMapping:
    return ClassMapping(
        [
            SemanticClass("background", "#808080", list(background)),
            SemanticClass("tissue", "#2ca02c", list(tissue)),
        ],
        n_clusters=4,
    )


def test_iou_matches_hand_computation():
    report = evaluate_classes({"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, mapping())
    scores = report.per_cube["leaf"]
    # 7 scored background pixels, 6 predicted right, 1 (row 3, col 0) predicted tissue;
    # 8 tissue pixels all right. IoU bg = 6 / (7 + 6 - 6), tissue = 8 / (8 + 9 - 8).
    assert scores.class_names[:2] == ["background", "tissue"]
    np.testing.assert_allclose(scores.iou[:2], [6 / 7, 8 / 9])
    assert np.isnan(scores.iou[2])  # lesion: in the legend, absent from mask and prediction
    assert scores.mean_iou == pytest.approx((6 / 7 + 8 / 9) / 2)
    assert scores.accuracy == pytest.approx(14 / 15)
    assert scores.ignored_pixels == 1
    np.testing.assert_array_equal(scores.confusion, [[6, 1, 0, 0], [0, 8, 0, 0], [0, 0, 0, 0]])


def test_unassigned_clusters_count_as_misses():
    report = evaluate_classes({"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, mapping(background=(0,)))
    scores = report.per_cube["leaf"]
    assert scores.confusion[0, -1] == 1  # the cluster-3 pixel
    np.testing.assert_allclose(scores.iou[:2], [5 / 7, 8 / 9])
    assert any("unassigned" in note for note in report.notes)


def test_pooled_sums_confusions_over_cubes():
    second_truth = np.ones((2, 4), dtype=int)
    second_clusters = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])  # 2 tissue pixels as background
    report = evaluate_classes(
        {"a": CLUSTERS, "b": second_clusters, "c": CLUSTERS},
        {"a": Mask(TRUTH), "b": Mask(second_truth)},
        mapping(),
    )
    assert list(report.per_cube) == ["a", "b"]
    assert any("c" in note for note in report.notes)
    np.testing.assert_allclose(report.per_cube["b"].iou[:2], [0.0, 6 / 8])
    # pooled: bg 6 hits, truth 7, predicted 8 -> 6/9; tissue 14 hits, truth 16, predicted 15 -> 14/17
    np.testing.assert_allclose(report.pooled.iou[:2], [6 / 9, 14 / 17])


def test_mapping_class_missing_from_the_legend_scores_zero_and_is_noted():
    named = mapping()
    named.classes[1].name = "healthy"
    report = evaluate_classes({"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, named)
    assert report.class_names == ["background", "tissue", "lesion", "healthy"]
    np.testing.assert_allclose(report.pooled.iou[[1, 3]], [0.0, 0.0])
    assert any("healthy" in note for note in report.notes)


def test_suggestion_recovers_the_merge():
    suggested, method, notes = suggest_mapping({"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, 4)
    assert method == "many-to-one"  # 4 clusters > 3 mask classes
    assert [c.clusters for c in suggested.classes] == [[0, 3], [1, 2], []]
    hungarian, method, notes = suggest_mapping(
        {"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, 4, method="hungarian"
    )
    assert method == "hungarian"
    # one cluster per class: 0 -> background (6 px), 2 -> tissue (7 px); lesion has no pixels,
    # so it takes one of the rest; one cluster is left out.
    assert hungarian.classes[0].clusters == [0] and hungarian.classes[1].clusters == [2]
    assert len(hungarian.unassigned_clusters()) == 1
    assert notes


def test_shape_mismatch_and_foreign_cluster_ids_are_refused():
    with pytest.raises(MaskError, match="differs from the cluster map"):
        evaluate_classes({"leaf": CLUSTERS[:3]}, {"leaf": Mask(TRUTH)}, mapping())
    with pytest.raises(MappingError, match="0..3"):
        evaluate_classes({"leaf": CLUSTERS + 1}, {"leaf": Mask(TRUTH)}, mapping())
    with pytest.raises(MaskError, match="no cube has both"):
        evaluate_classes({"leaf": CLUSTERS}, {"other": Mask(TRUTH)}, mapping())


def test_reports_export_as_json_and_csv_without_overwriting(tmp_path):
    report = evaluate_classes({"leaf": CLUSTERS}, {"leaf": Mask(TRUTH)}, mapping())
    json_path, csv_path = tmp_path / "iou.json", tmp_path / "iou.csv"
    write_report(report, json_path=json_path, csv_path=csv_path)
    document = json.loads(json_path.read_text())
    assert document["pooled"]["iou"]["background"] == pytest.approx(6 / 7)
    assert document["pooled"]["iou"]["lesion"] is None
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("cube,class,iou")
    assert "leaf,tissue,0.888889,8,9,8,9" in rows
    csv_path.write_text("old")
    with pytest.raises(FileExistsError):
        write_report(report, json_path=tmp_path / "new.json", csv_path=csv_path)
    assert csv_path.read_text() == "old" and not (tmp_path / "new.json").exists()
    assert "0.8571" in report.format_table()
