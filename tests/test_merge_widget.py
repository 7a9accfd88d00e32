"""qtbot tests of the "DGC: Cluster merge" panel, on hand-made cluster layers of a synthetic scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_dgc._qt.merge_widget import MergeWidget, classes_layer_name, mask_layer_name
from napari_dgc.analysis.classes import cluster_statistics
from napari_dgc.datasets.synthetic import make_leaf_scene

ROWS, COLS, BANDS = 24, 28, 12


@pytest.fixture(scope="module")
def scene():
    return make_leaf_scene(ROWS, COLS, BANDS, seed=3)


def scene_clusters(labels: np.ndarray) -> np.ndarray:
    """Four clusters: background split into left (0) and right (3) halves, tissue 1, lesion 2."""
    clusters = labels.astype(np.int32).copy()
    right = np.zeros_like(labels, dtype=bool)
    right[:, COLS // 2 :] = True
    clusters[(labels == 0) & right] = 3
    return clusters


def add_cluster_layer(viewer, scene, name="leaf", run="/runs/demo", checkpoint="step-000010"):
    viewer.add_image(np.moveaxis(scene.cube, -1, 0), name=name, metadata={"wavelengths": scene.wavelengths.tolist()})
    clusters = scene_clusters(scene.labels)
    viewer.add_labels(
        clusters + 1,
        name=f"DGC clusters [{name}]",
        metadata={"dgc_run": run, "dgc_checkpoint": checkpoint, "dgc_cube_layer": name,
                  "dgc_n_clusters": 4, "dgc_label_offset": 1},
    )
    return clusters


@pytest.fixture
def panel(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    clusters = add_cluster_layer(viewer, scene)
    widget = MergeWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget, clusters


def layer(viewer, name):
    return viewer.layers[name]


def test_panel_lists_clusters_with_shares_and_spectra(panel, scene):
    viewer, widget, clusters = panel
    assert widget.cluster_table.rowCount() == 4
    assert widget.clustering_combo.currentText().startswith("demo @ step-000010 (K=4, 1 cube)")
    for k in range(4):
        share = 100 * np.mean(clusters == k)
        assert float(widget.cluster_table.item(k, 2).text()) == pytest.approx(share, abs=0.05)
    expected = cluster_statistics(scene.cube, clusters, 4)
    np.testing.assert_allclose(widget.statistics["leaf"].mean, expected.mean, rtol=1e-5)
    assert widget.spectrum_plot.plotted_clusters == [k for k in range(4) if expected.counts[k]]
    widget.select_clusters([1])
    assert widget.spectrum_plot.plotted_clusters == [1]


def test_merging_updates_the_classes_layer_live(panel):
    viewer, widget, clusters = panel
    widget.select_clusters([0, 3])
    widget.assign_selected(0)
    classes = layer(viewer, classes_layer_name("leaf")).data
    np.testing.assert_array_equal(classes == 1, np.isin(clusters, [0, 3]))
    assert not classes[np.isin(clusters, [1, 2])].any()  # still unassigned
    widget.add_class("lesion")
    widget.select_clusters([1])
    widget.class_list.clusters_dropped.emit(1)  # drop on "tissue"
    widget.select_clusters([2])
    widget.assign_selected(2)
    np.testing.assert_array_equal(layer(viewer, classes_layer_name("leaf")).data, widget.mapping.lookup_table()[clusters])
    assert [c.clusters for c in widget.mapping.classes] == [[0, 3], [1], [2]]
    assert widget.cluster_table.item(1, 1).text() == "tissue"
    widget.set_class_color(2, "#123456")
    assert layer(viewer, classes_layer_name("leaf")).colormap.color_dict[3] is not None


def test_renaming_to_a_taken_name_is_refused(panel):
    viewer, widget, _ = panel
    widget.class_list.item(1).setText("Background")
    assert widget.mapping.classes[1].name == "tissue"
    assert "used twice" in widget.status_label.text()


def test_clicking_a_pixel_shows_cluster_class_and_spectrum(panel, scene):
    viewer, widget, clusters = panel
    widget.select_clusters([1])
    widget.assign_selected(1)
    row, col = map(int, np.argwhere(clusters == 1)[0])
    text = widget.describe_pixel((float(row), float(col)))
    assert text == f"leaf, row {row}, col {col}: cluster 1, class tissue"
    np.testing.assert_allclose(widget.pixel[1], scene.cube[row, col])
    assert widget.describe_pixel((-5.0, -5.0)) is None


def test_drawn_mask_gives_hand_computed_iou(panel, scene):
    viewer, widget, clusters = panel
    mask_layer = widget.new_mask_layer()
    assert mask_layer.name == mask_layer_name("leaf") and mask_layer.mode == "paint"
    truth = (scene.labels > 0).astype(np.uint8)  # background / tissue (lesion counted as tissue)
    mask_layer.brush_size = 1
    for row, col in np.argwhere(truth == 1):
        mask_layer.paint((row, col), 1, refresh=False)
    np.testing.assert_array_equal(mask_layer.data, truth)
    widget.select_clusters([0, 3])
    widget.assign_selected(0)
    widget.select_clusters([1])
    widget.assign_selected(1)  # lesion cluster 2 stays unassigned: a miss for tissue
    report = widget.compute_iou()
    tissue_hits = np.sum((truth == 1) & (clusters == 1))
    expected_tissue = tissue_hits / np.sum((truth == 1) | (clusters == 1))
    np.testing.assert_allclose(report.pooled.iou[:2], [1.0, expected_tissue])
    assert float(widget.iou_table.item(1, 0).text()) == pytest.approx(expected_tissue, abs=1e-4)
    assert "unassigned" in widget.confusion_label.text()


def test_mask_class_names_can_merge_mask_values(panel, scene):
    viewer, widget, clusters = panel
    viewer.add_labels(scene.labels, name="ground truth", metadata={"dgc_cube_layer": "leaf"})
    widget.select_clusters([0, 3])
    widget.assign_selected(0)
    widget.select_clusters([1, 2])
    widget.assign_selected(1)
    assert widget.compute_iou().pooled.iou[2] == 0.0  # lesion in the mask, no lesion class
    widget.mask_classes_edit.setText("background, tissue, tissue")
    report = widget.compute_iou()
    assert report.class_names == ["background", "tissue"]
    np.testing.assert_allclose(report.pooled.iou, [1.0, 1.0])
    widget.mask_classes_edit.setText("background,,tissue")
    assert widget.compute_iou() is None and "non-empty" in widget.status_label.text()


def test_without_mapping_the_suggestion_is_offered(panel, scene, tmp_path):
    viewer, widget, clusters = panel
    viewer.add_labels(scene.labels, name="ground truth", metadata={"dgc_cube_layer": "leaf", "class_names": ["background", "tissue", "lesion"]})
    report = widget.compute_iou()
    assert report.mapping_source.startswith("suggested")
    assert "suggested" in widget.status_label.text()
    assert report.pooled.mean_iou == pytest.approx(1.0)
    widget.apply_suggestion()
    assert [c.clusters for c in widget.mapping.classes] == [[0, 3], [1], [2]]
    widget.export_report(json_path=tmp_path / "iou.json", csv_path=tmp_path / "iou.csv")
    assert json.loads((tmp_path / "iou.json").read_text())["pooled"]["mean_iou"] == pytest.approx(1.0)


def test_mask_import_matches_cubes_and_refuses_bad_files(panel, scene, tmp_path):
    viewer, widget, _ = panel
    labelme = tmp_path / "leaf.json"
    labelme.write_text(json.dumps({"imageHeight": ROWS, "imageWidth": COLS, "shapes": [
        {"label": "tissue", "points": [[2, 2], [10, 2], [10, 8], [2, 8]], "shape_type": "polygon"}]}))
    n_layers = len(viewer.layers)
    assert widget.import_masks([labelme]) is not None
    assert len(viewer.layers) == n_layers + 1
    assert layer(viewer, mask_layer_name("leaf")).data[5, 5] == 1

    wrong_shape = tmp_path / "leaf_mask.png"
    Image.fromarray(np.zeros((ROWS + 1, COLS), np.uint8)).save(wrong_shape)
    assert widget.import_masks([wrong_shape]) is None
    assert "differs from the cube's" in widget.status_label.text()
    assert len(viewer.layers) == n_layers + 1  # nothing added

    unknown = tmp_path / "leaf-gt.npy"
    np.save(unknown, np.full((ROWS, COLS), 9))
    assert widget.import_masks([unknown]) is None
    assert "unknown mask value(s) 9" in widget.status_label.text()

    other_size = tmp_path / "leaf_labels.json"
    other_size.write_text(json.dumps({"imageHeight": 10, "imageWidth": 10, "shapes": []}))
    assert widget.import_masks([other_size]) is None
    assert "10x10 image" in widget.status_label.text()


def test_mapping_file_round_trip_and_bad_files(panel, tmp_path):
    viewer, widget, clusters = panel
    widget.select_clusters([0, 3])
    widget.assign_selected(0)
    assert widget.save_mapping(tmp_path / "partial.json") is None  # clusters 1, 2 unassigned
    assert "[1, 2]" in widget.status_label.text()
    widget.select_clusters([1, 2])
    widget.assign_selected(1)
    path = widget.save_mapping(tmp_path / "merge.json")
    saved = widget.mapping.to_json()
    widget.select_clusters([0, 1, 2, 3])
    widget.assign_selected(None)
    widget.load_mapping(path)
    assert widget.mapping.to_json() == saved
    np.testing.assert_array_equal(layer(viewer, classes_layer_name("leaf")).data, np.where(np.isin(clusters, [0, 3]), 1, 2))

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"0": [0, 3, 5], "1": [1, 2]}))
    assert widget.load_mapping(foreign) is None
    assert "cluster 5" in widget.status_label.text()
    assert widget.mapping.to_json() == saved  # unchanged

    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"0": [0], "1": [1, 2, 3]}))
    widget.load_mapping(reference)
    assert [c.clusters for c in widget.mapping.classes] == [[0], [1, 2, 3]]


def test_class_maps_export_without_overwriting(panel, tmp_path):
    viewer, widget, clusters = panel
    widget.select_clusters([0, 3])
    widget.assign_selected(0)
    widget.select_clusters([1, 2])
    widget.assign_selected(1)
    written = widget.export_class_maps(tmp_path, "png")
    assert [p.name for p in written] == ["leaf_classes.png", "leaf_classes.legend.json"]
    with Image.open(written[0]) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), widget.mapping.apply(clusters))
    legend = json.loads(written[1].read_text())
    assert [v["name"] for v in legend["values"]] == ["unassigned", "background", "tissue"]
    before = written[0].read_bytes()
    widget.select_clusters([2])
    widget.assign_selected(0)
    assert widget.export_class_maps(tmp_path, "png") is None
    assert "refusing to overwrite" in widget.status_label.text()
    assert written[0].read_bytes() == before
