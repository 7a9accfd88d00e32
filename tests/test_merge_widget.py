"""qtbot tests of the "DGC: Cluster merge" panel, on hand-made cluster layers of a synthetic scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from qtpy.QtWidgets import QFileDialog, QPushButton

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
    viewer.add_image(
        np.moveaxis(scene.cube, -1, 0), name=name, metadata={"wavelengths": scene.wavelengths.tolist()}
    )
    clusters = scene_clusters(scene.labels)
    viewer.add_labels(
        clusters + 1,
        name=f"DGC clusters [{name}]",
        metadata={
            "dgc_run": run,
            "dgc_checkpoint": checkpoint,
            "dgc_cube_layer": name,
            "dgc_n_clusters": 4,
            "dgc_label_offset": 1,
        },
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
    model = widget.model
    assert widget.clusters_view.table.rowCount() == 4
    assert widget.clustering_combo.currentText().startswith("demo @ step-000010 (K=4, 1 cube)")
    for k in range(4):
        share = 100 * np.mean(clusters == k)
        assert float(widget.clusters_view.table.item(k, 2).text()) == pytest.approx(share, abs=0.05)
    expected = cluster_statistics(scene.cube, clusters, 4)
    np.testing.assert_allclose(model.statistics["leaf"].mean, expected.mean, rtol=1e-5)
    plot = widget.spectra_view.plot
    assert plot.plotted_clusters == [k for k in range(4) if expected.counts[k]]
    assert plot.getAxis("bottom").labelText == "wavelength (nm)"
    model.select_clusters([1])
    assert plot.plotted_clusters == [1]
    assert widget.clusters_view.table.selectionModel().selectedRows()[0].row() == 1
    widget.clusters_view.table.selectRow(2)  # a click in the table selects in the model
    assert model.selected_clusters == [2] and plot.plotted_clusters == [2]


def test_merging_updates_the_classes_layer_live(panel):
    viewer, widget, clusters = panel
    model = widget.model
    model.select_clusters([0, 3])
    widget.classes_view.class_list.setCurrentRow(0)
    widget.classes_view.assign_button.click()
    classes = layer(viewer, classes_layer_name("leaf")).data
    np.testing.assert_array_equal(classes == 1, np.isin(clusters, [0, 3]))
    assert not classes[np.isin(clusters, [1, 2])].any()  # still unassigned
    model.add_class("lesion")
    model.select_clusters([1])
    widget.classes_view.class_list.clusters_dropped.emit(1)  # drop on "tissue"
    model.select_clusters([2])
    model.assign_selected(2)
    np.testing.assert_array_equal(
        layer(viewer, classes_layer_name("leaf")).data, model.mapping.lookup_table()[clusters]
    )
    assert [c.clusters for c in model.mapping.classes] == [[0, 3], [1], [2]]
    assert widget.clusters_view.table.item(1, 1).text() == "tissue"
    assert [widget.classes_view.class_list.item(i).text() for i in range(3)] == [
        "background",
        "tissue",
        "lesion",
    ]
    model.set_class_color(2, "#123456")
    assert layer(viewer, classes_layer_name("leaf")).colormap.color_dict[3] is not None


def test_renaming_to_a_taken_name_is_refused(panel):
    viewer, widget, _ = panel
    widget.classes_view.class_list.item(1).setText("Background")
    assert widget.model.mapping.classes[1].name == "tissue"
    assert widget.classes_view.class_list.item(1).text() == "tissue"
    assert "used twice" in widget.status_label.text()


def test_assigning_without_a_selection_is_refused(panel):
    viewer, widget, _ = panel
    widget.classes_view.assign_button.click()
    assert "select one or more clusters" in widget.status_label.text()
    assert widget.model.mapping.unassigned_clusters() == [0, 1, 2, 3]


def test_clicking_a_pixel_shows_cluster_class_and_spectrum(panel, scene):
    viewer, widget, clusters = panel
    model = widget.model
    model.select_clusters([1])
    model.assign_selected(1)
    row, col = map(int, np.argwhere(clusters == 1)[0])
    text = widget.describe_pixel((float(row), float(col)))
    assert text == f"leaf, row {row}, col {col}: cluster 1, class tissue"
    assert widget.spectra_view.pixel_label.text() == text
    np.testing.assert_allclose(model.pixel[1], scene.cube[row, col])
    assert widget.describe_pixel((-5.0, -5.0)) is None


def test_drawn_mask_gives_hand_computed_iou(panel, scene):
    viewer, widget, clusters = panel
    model = widget.model
    mask_layer = widget.new_mask_layer()
    assert mask_layer.name == mask_layer_name("leaf") and mask_layer.mode == "paint"
    assert "leaf ← " + mask_layer.name in widget.masks_view.mask_label.text()
    truth = (scene.labels > 0).astype(np.uint8)  # background / tissue (lesion counted as tissue)
    mask_layer.brush_size = 1
    for row, col in np.argwhere(truth == 1):
        mask_layer.paint((row, col), 1, refresh=False)
    np.testing.assert_array_equal(mask_layer.data, truth)
    model.select_clusters([0, 3])
    model.assign_selected(0)
    model.select_clusters([1])
    model.assign_selected(1)  # lesion cluster 2 stays unassigned: a miss for tissue
    report = widget.iou_view.compute_iou()
    tissue_hits = np.sum((truth == 1) & (clusters == 1))
    expected_tissue = tissue_hits / np.sum((truth == 1) | (clusters == 1))
    np.testing.assert_allclose(report.pooled.iou[:2], [1.0, expected_tissue])
    assert float(widget.iou_view.table.item(1, 0).text()) == pytest.approx(expected_tissue, abs=1e-4)
    assert "unassigned" in widget.iou_view.confusion_label.text()


def test_new_mask_needs_a_cluster_layer(make_napari_viewer, qtbot):
    widget = MergeWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    assert widget.new_mask_layer() is None
    assert "no 'DGC clusters' layer" in widget.status_label.text()


def test_mask_class_names_can_merge_mask_values(panel, scene):
    viewer, widget, clusters = panel
    model = widget.model
    viewer.add_labels(scene.labels, name="ground truth", metadata={"dgc_cube_layer": "leaf"})
    model.select_clusters([0, 3])
    model.assign_selected(0)
    model.select_clusters([1, 2])
    model.assign_selected(1)
    assert widget.iou_view.compute_iou().pooled.iou[2] == 0.0  # lesion in the mask, no lesion class
    widget.masks_view.names_edit.setText("background, tissue, tissue")
    assert model.ground_truth.class_names == "background, tissue, tissue"
    report = widget.iou_view.compute_iou()
    assert report.class_names == ["background", "tissue"]
    np.testing.assert_allclose(report.pooled.iou, [1.0, 1.0])
    widget.masks_view.names_edit.setText("background,,tissue")
    assert widget.iou_view.compute_iou() is None and "non-empty" in widget.status_label.text()
    assert model.report is report  # the refused score replaced nothing


def test_without_mapping_the_suggestion_is_offered(panel, scene, tmp_path):
    viewer, widget, clusters = panel
    model = widget.model
    viewer.add_labels(
        scene.labels,
        name="ground truth",
        metadata={"dgc_cube_layer": "leaf", "class_names": ["background", "tissue", "lesion"]},
    )
    report = widget.iou_view.compute_iou()
    assert report.mapping_source.startswith("suggested")
    assert "suggested" in widget.status_label.text()
    assert report.pooled.mean_iou == pytest.approx(1.0)
    widget.iou_view.apply_suggestion()
    assert [c.clusters for c in model.mapping.classes] == [[0, 3], [1], [2]]
    model.export_report(json_path=tmp_path / "iou.json", csv_path=tmp_path / "iou.csv")
    assert json.loads((tmp_path / "iou.json").read_text())["pooled"]["mean_iou"] == pytest.approx(1.0)


def test_mask_import_matches_cubes_and_refuses_bad_files(panel, scene, tmp_path):
    viewer, widget, _ = panel
    labelme = tmp_path / "leaf.json"
    labelme.write_text(
        json.dumps(
            {
                "imageHeight": ROWS,
                "imageWidth": COLS,
                "shapes": [
                    {"label": "tissue", "points": [[2, 2], [10, 2], [10, 8], [2, 8]], "shape_type": "polygon"}
                ],
            }
        )
    )
    n_layers = len(viewer.layers)
    assert widget.import_masks([labelme]) is not None
    assert len(viewer.layers) == n_layers + 1
    assert layer(viewer, mask_layer_name("leaf")).data[5, 5] == 1
    assert layer(viewer, mask_layer_name("leaf")).metadata["dgc_mask_file"] == str(labelme)

    wrong_shape = tmp_path / "leaf_mask.png"
    Image.fromarray(np.zeros((ROWS + 1, COLS), np.uint8)).save(wrong_shape)
    assert widget.import_masks([wrong_shape]) is None
    assert "differs from the cube's" in widget.status_label.text()
    assert len(viewer.layers) == n_layers + 1  # nothing added

    # Masks hold any number of classes, 0..254 (issue 15 item 2): a value past 255 is refused.
    unknown = tmp_path / "leaf-gt.npy"
    np.save(unknown, np.full((ROWS, COLS), 300))
    assert widget.import_masks([unknown]) is None
    assert "mask value(s) 300 out of range" in widget.status_label.text()

    other_size = tmp_path / "leaf_labels.json"
    other_size.write_text(json.dumps({"imageHeight": 10, "imageWidth": 10, "shapes": []}))
    assert widget.import_masks([other_size]) is None
    assert "10x10 image" in widget.status_label.text()


def test_mapping_file_round_trip_and_bad_files(panel, tmp_path):
    viewer, widget, clusters = panel
    model, view = widget.model, widget.classes_view
    model.select_clusters([0, 3])
    model.assign_selected(0)
    assert view.save_mapping(tmp_path / "partial.json") is None  # clusters 1, 2 unassigned
    assert "[1, 2]" in widget.status_label.text()
    model.select_clusters([1, 2])
    model.assign_selected(1)
    path = view.save_mapping(tmp_path / "merge.json")
    saved = model.mapping.to_json()
    model.select_clusters([0, 1, 2, 3])
    model.assign_selected(None)
    view.load_mapping(path)
    assert model.mapping.to_json() == saved
    np.testing.assert_array_equal(
        layer(viewer, classes_layer_name("leaf")).data, np.where(np.isin(clusters, [0, 3]), 1, 2)
    )

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"0": [0, 3, 5], "1": [1, 2]}))
    assert view.load_mapping(foreign) is None
    assert "cluster 5" in widget.status_label.text()
    assert model.mapping.to_json() == saved  # unchanged

    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"0": [0], "1": [1, 2, 3]}))
    view.load_mapping(reference)
    assert [c.clusters for c in model.mapping.classes] == [[0], [1, 2, 3]]


def test_class_maps_export_without_overwriting(panel, tmp_path):
    viewer, widget, clusters = panel
    model, view = widget.model, widget.export_view
    model.select_clusters([0, 3])
    model.assign_selected(0)
    model.select_clusters([1, 2])
    model.assign_selected(1)
    written = view.export_class_maps(tmp_path, "png")
    assert [p.name for p in written] == ["leaf_classes.png", "leaf_classes.legend.json"]
    with Image.open(written[0]) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), model.mapping.apply(clusters))
    legend = json.loads(written[1].read_text())
    assert [v["name"] for v in legend["values"]] == ["unassigned", "background", "tissue"]
    before = written[0].read_bytes()
    model.select_clusters([2])
    model.assign_selected(0)
    assert view.export_class_maps(tmp_path, "png") is None
    assert "refusing to overwrite" in widget.status_label.text()
    assert written[0].read_bytes() == before


@pytest.mark.parametrize("replace", [False, True])
def test_class_maps_button_asks_before_replacing(panel, tmp_path, monkeypatch, replace):
    viewer, widget, clusters = panel
    model, view = widget.model, widget.export_view
    model.select_clusters([0, 1, 2, 3])
    model.assign_selected(0)
    target = tmp_path / "leaf_classes.tif"
    target.write_bytes(b"old")
    asked = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args: str(tmp_path))
    monkeypatch.setattr(view, "_confirm_replace", lambda where: asked.append(where) or replace)
    view.format_combo.setCurrentText("tif")
    next(button for button in view.findChildren(QPushButton) if button.text() == "Class maps…").click()
    assert asked == [str(tmp_path)]
    if replace:
        assert target.read_bytes() != b"old" and "Wrote 1 class map(s)" in widget.status_label.text()
    else:
        assert target.read_bytes() == b"old" and "refusing to overwrite" in widget.status_label.text()


def test_clicked_pixel_text_follows_the_mapping(panel, scene):
    """Issue 15, item 10: the clicked pixel's text is not stale after assigning a class."""
    viewer, widget, clusters = panel
    model = widget.model
    row, col = map(int, np.argwhere(clusters == 1)[0])
    text = widget.describe_pixel((float(row), float(col)))
    assert text.endswith("cluster 1, class unassigned")
    model.select_clusters([1])
    model.assign_selected(1)
    assert widget.spectra_view.pixel_label.text() == f"leaf, row {row}, col {col}: cluster 1, class tissue"
    model.rename_class(1, "leaf tissue")
    assert widget.spectra_view.pixel_label.text().endswith("cluster 1, class leaf tissue")
    model.assign_selected(None)
    assert widget.spectra_view.pixel_label.text().endswith("cluster 1, class unassigned")


def test_granularity_slider_sets_the_classes_live_and_hand_edits_follow(panel):
    viewer, widget, clusters = panel
    model, slider = widget.model, widget.granularity_view.slider
    assert slider.isEnabled() and (slider.minimum(), slider.maximum()) == (2, 4)
    slider.setValue(3)
    assert model.granularity == 3 and len(model.mapping.classes) == 3
    np.testing.assert_array_equal(
        layer(viewer, classes_layer_name("leaf")).data, model.mapping.lookup_table()[clusters]
    )
    slider.setValue(2)
    assert len(model.mapping.classes) == 2 and widget.granularity_view.value_label.text() == "2"
    model.select_clusters([0])
    model.assign_selected(None)  # by hand, on top of the level
    assert model.granularity is None and widget.granularity_view.value_label.text() == "by hand"
    assert slider.value() == 2 and 0 in model.mapping.unassigned_clusters()
    widget.classes_view.undo_button.click()
    assert model.granularity == 2 and widget.granularity_view.value_label.text() == "2"
    widget.classes_view.undo_button.click()  # the drag 3 → 2 was one step
    assert model.granularity is None and model.mapping.unassigned_clusters() == [0, 1, 2, 3]
    assert not widget.classes_view.undo_button.isEnabled() and widget.classes_view.redo_button.isEnabled()


def test_granularity_slider_is_off_without_cube_pixels(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    add_cluster_layer(viewer, scene)
    viewer.layers.remove("leaf")  # the cube: no spectra, no tree
    widget = MergeWidget(viewer)
    qtbot.addWidget(widget)
    assert not widget.granularity_view.slider.isEnabled()
    assert widget.granularity_view.value_label.text() == "–"
    assert "needs the clusters' spectra" in widget.granularity_view.slider.toolTip()


def test_undo_and_redo_keys_while_the_panel_has_the_focus(panel):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QShortcut

    viewer, widget, clusters = panel
    model = widget.model
    model.assign([0, 3], 0)
    shortcuts = {s.key().toString(): s for s in widget.findChildren(QShortcut)}
    assert all(s.context() == Qt.WidgetWithChildrenShortcut for s in shortcuts.values())
    shortcuts["Ctrl+Z"].activated.emit()
    assert model.mapping.unassigned_clusters() == [0, 1, 2, 3]
    shortcuts["Ctrl+Z"].activated.emit()  # nothing left to undo: no error shown
    assert "nothing" not in widget.status_label.text()
    shortcuts["Ctrl+Shift+Z"].activated.emit()
    assert model.mapping.classes[0].clusters == [0, 3]
    np.testing.assert_array_equal(
        layer(viewer, classes_layer_name("leaf")).data == 1, np.isin(clusters, [0, 3])
    )


def test_mask_from_a_shapes_layer_with_class_features(panel, scene):
    viewer, widget, clusters = panel
    rectangle = np.array([[2, 2], [2, 9], [9, 9], [9, 2]], dtype=float)
    triangle = np.array([[14, 14], [14, 22], [22, 14]], dtype=float)
    viewer.add_shapes(
        [rectangle, triangle, rectangle + [0, 14]],
        shape_type=["rectangle", "polygon", "ellipse"],
        features={"class": ["sugar", "flour", "belt"]},
        name="annotations",
    )
    widget.masks_view.names_edit.setText("belt, sugar")
    mask_layer = widget.mask_from_shapes()
    assert mask_layer.name == mask_layer_name("leaf") and "3 shape(s)" in widget.status_label.text()
    assert mask_layer.data[5, 5] == 1 and mask_layer.data[16, 16] == 2 and mask_layer.data[0, 0] == 255
    assert mask_layer.data[5, 19] == 0 and mask_layer.data[2, 16] == 255  # ellipse centre; its box's corner
    assert mask_layer.metadata["class_names"] == ["belt", "sugar", "flour"]
    assert widget.model.ground_truth.inputs["leaf"].legend == {0: "belt", 1: "sugar", 2: "flour"}

    viewer.add_shapes([[[1, 1], [5, 5]]], shape_type="line", name="a line")
    assert widget.mask_from_shapes() is None and "encloses no pixels" in widget.status_label.text()


def test_mask_from_shapes_needs_a_shapes_layer(panel):
    viewer, widget, _ = panel
    assert widget.mask_from_shapes() is None
    assert "no Shapes layer" in widget.status_label.text()


def test_mask_layers_keep_names_by_value_and_colours_by_name(panel):
    viewer, widget, _ = panel
    widget.masks_view.names_edit.setText("")
    legend = {1: "sugar", 2: "flour", 4: "eraser"}  # no 0, a gap at 3
    values = np.ones(layer(viewer, "DGC clusters [leaf]").data.shape, np.uint8)
    from napari_dgc._qt.merge_layers import add_mask_layer, mask_legend

    source = layer(viewer, "DGC clusters [leaf]")
    mask_layer = add_mask_layer(viewer, values, legend, "leaf", source, colors={2: "#010203"})
    assert mask_layer.metadata["class_names"] == ["", "sugar", "flour", "", "eraser"]
    assert mask_legend(mask_layer) == legend
    colors = mask_layer.colormap.color_dict
    np.testing.assert_allclose(colors[2][:3], np.array([1, 2, 3]) / 255, atol=1e-3)
    assert colors[0][3] == 0  # value 0 stays transparent
    # A new mask takes the names of the masks there are instead of background/tissue/lesion.
    new = widget.new_mask_layer()
    assert new.metadata["class_names"] == ["", "sugar", "flour", "", "eraser"]
    assert new.data.max() == 255 and new.selected_label == 1  # unpainted pixels: ignore
    assert "1 sugar, 2 flour, 4 eraser" in widget.status_label.text()


def test_typed_mask_class_names_colour_the_mask_layers(panel, scene):
    viewer, widget, _ = panel
    truth = viewer.add_labels(scene.labels, name="ground truth", metadata={"dgc_cube_layer": "leaf"})
    widget.masks_view.names_edit.setText("background, lesion, tissue")
    colors = truth.colormap.color_dict
    np.testing.assert_allclose(colors[1][:3], np.array([0xD6, 0x27, 0x28]) / 255, atol=1e-3)  # lesion red
    np.testing.assert_allclose(colors[2][:3], np.array([0x2C, 0xA0, 0x2C]) / 255, atol=1e-3)  # tissue green
    widget.masks_view.names_edit.setText("background,,")  # malformed: reported when scored, colours kept
    assert truth.colormap.color_dict[1] is not None
