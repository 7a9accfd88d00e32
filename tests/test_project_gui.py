"""Save a whole session as a project in napari and reopen it in a fresh viewer (qtbot)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _training_helpers import N_BANDS, tiny_config, tiny_cube

from napari_dgc._qt import project_view as project_module
from napari_dgc._qt.cube_layers import labels_layer_name
from napari_dgc._qt.merge_widget import mask_layer_name
from napari_dgc._qt.project_view import masks_folder
from napari_dgc.training.loop import train

TIMEOUT_MS = 120_000
CHECKPOINT = "step-000002"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A cube file with wavelengths and a tiny finished run on it."""
    folder = tmp_path_factory.mktemp("gui-project")
    cube = tiny_cube(seed=1)
    np.save(folder / "leaf.npy", cube)
    (folder / "leaf.json").write_text(json.dumps({"wavelengths": list(np.linspace(450, 900, N_BANDS))}))
    for _ in train([cube], tiny_config(steps=4), folder / "runs" / "leaf"):
        pass
    return folder


@pytest.fixture
def errors(monkeypatch):
    messages: list[str] = []
    monkeypatch.setattr(project_module, "show_error", messages.append)
    return messages


def panels(viewer):
    timeline = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Checkpoints")[1]
    merge = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Cluster merge")[1]
    return timeline, merge


def test_save_and_reopen_restores_cubes_run_mapping_masks_and_scores(
    make_napari_viewer, qtbot, folder, errors
):
    viewer = make_napari_viewer()
    viewer.open(folder / "leaf.npy", plugin="napari-dgc")
    timeline, merge = panels(viewer)
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS):
        assert timeline.open_run(folder / "runs" / "leaf")
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS):
        timeline.select_checkpoint(CHECKPOINT)
    merge.refresh_layers()
    model = merge.model
    assert model.n_clusters == 3
    model.rename_class(0, "soil")
    model.set_class_color(0, "#112233")
    model.assign([0], 0)
    model.assign([2], 1)  # cluster 1 stays unassigned: a mapping being built
    mask = merge.new_mask_layer("leaf")
    painted = np.zeros(mask.data.shape, dtype=np.uint8)
    painted[:, 16:] = 1
    mask.data = painted
    model.compute_iou()
    saved_iou = model.report.pooled.mean_iou

    path = timeline.project_view.save(folder / "leaf.dgcproj.json")
    assert path is not None and not errors
    document = json.loads(path.read_text())
    assert document["cubes"] == [
        {"name": "leaf", "path": "leaf.npy", "key": None, "shape": None, "band_axis": None}
    ]
    assert (document["run"], document["checkpoint"]) == ("runs/leaf", CHECKPOINT)
    assert document["masks"] == [{"cube": "leaf", "path": "leaf-masks/leaf_mask.tif"}]
    assert (masks_folder(path) / "leaf_mask.tif").is_file()
    assert document["scores"]["pooled"]["mean_iou"] == pytest.approx(saved_iou)
    mapping = model.mapping.to_json()

    fresh = make_napari_viewer()
    timeline2, _ = panels(fresh)
    view = timeline2.project_view
    with qtbot.waitSignal(view.restored, timeout=TIMEOUT_MS):
        view.open(path)
    merge2 = project_module.find_merge_widget(fresh)
    cube = fresh.layers["leaf"]
    assert cube.metadata["wavelengths"][0] == pytest.approx(450.0)
    assert timeline2.current_checkpoint_id() == CHECKPOINT
    assert fresh.layers[labels_layer_name("leaf")].metadata["dgc_checkpoint"] == CHECKPOINT
    assert merge2.model.mapping.to_json() == mapping
    np.testing.assert_array_equal(fresh.layers[mask_layer_name("leaf")].data, painted)
    assert merge2.model.report.pooled.mean_iou == pytest.approx(saved_iou)
    assert "mean IoU" in view.status_label.text() and not errors


def test_a_project_naming_a_missing_file_adds_no_layer(make_napari_viewer, qtbot, folder, tmp_path, errors):
    document = {
        "format": "napari-dgc-project",
        "version": 1,
        "cubes": [{"name": "leaf", "path": str(folder / "leaf.npy")}, {"name": "gone", "path": "gone.npy"}],
        "run": str(folder / "runs" / "leaf"),
    }
    path = tmp_path / "broken.dgcproj.json"
    path.write_text(json.dumps(document))
    viewer = make_napari_viewer()
    timeline, _ = panels(viewer)
    view = timeline.project_view
    with qtbot.waitSignal(view.failed, timeout=TIMEOUT_MS) as blocker:
        view.open(path)
    assert "broken.dgcproj.json: cubes[1].path:" in blocker.args[0] and "does not exist" in blocker.args[0]
    assert len(viewer.layers) == 0 and timeline.model.run_path is None
    assert errors == [blocker.args[0]]
    qtbot.waitUntil(lambda: view.open_button.isEnabled(), timeout=TIMEOUT_MS)


def test_menu_items_are_in_file_io_utilities(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    items = get_app_model().menus.get_menu("napari/file/io_utilities")
    commands = {item.command.id for item in items if hasattr(item, "command")}
    assert {"napari-dgc.save_project", "napari-dgc.open_project"} <= commands


def test_a_run_without_matching_cubes_still_finishes_opening(
    make_napari_viewer, qtbot, folder, tmp_path, errors
):
    mapping = {
        "format": "napari-dgc-class-mapping",
        "version": 1,
        "n_clusters": 3,
        "classes": [{"name": "soil", "color": "#112233", "clusters": [0]}],
    }
    document = {
        "format": "napari-dgc-project",
        "version": 1,
        "run": str(folder / "runs" / "leaf"),
        "checkpoint": CHECKPOINT,
        "mapping": mapping,
    }
    path = tmp_path / "no-cubes.dgcproj.json"
    path.write_text(json.dumps(document))
    viewer = make_napari_viewer()
    timeline, _ = panels(viewer)
    with qtbot.waitSignal(timeline.project_view.restored, timeout=TIMEOUT_MS) as blocker:
        timeline.project_view.open(path)
    assert "no open cube has its bands" in blocker.args[0]
    assert "Class mapping not restored" in blocker.args[0]
    assert timeline.model.run_path is not None and not errors


def test_file_menu_command_saves_through_the_checkpoints_panel(
    make_napari_viewer, qtbot, folder, tmp_path, monkeypatch
):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    viewer.open(folder / "leaf.npy", plugin="napari-dgc")
    target = tmp_path / "menu"
    monkeypatch.setattr(
        project_module.QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(target), "")
    )
    get_app_model().commands.execute_command("napari-dgc.save_project").result()
    saved = tmp_path / "menu.dgcproj.json"  # the suffix is added
    assert json.loads(saved.read_text())["cubes"][0]["path"] == str(folder / "leaf.npy")
    assert project_module.find_merge_widget(viewer) is None  # saving opens no merge panel


def test_painted_masks_stay_in_the_project_folder_whatever_the_layer_name(
    make_napari_viewer, folder, tmp_path
):
    from napari_dgc._qt.merge_layers import add_mask_layer

    viewer = make_napari_viewer()
    viewer.open(folder / "leaf.npy", plugin="napari-dgc")
    cube = viewer.layers["leaf"]
    cube.name = "a/../../b"
    values = np.zeros(cube.data.shape[-2:], dtype=np.uint8)
    values[3:9, 4:12] = 1
    add_mask_layer(
        viewer, values, {0: "background", 1: "tissue"}, cube.name, viewer.layers["leaf (pseudo-RGB)"]
    )
    timeline, _ = panels(viewer)
    (tmp_path / "p.dgcproj.json").write_text("{}")
    assert timeline.project_view.save(tmp_path / "p.dgcproj.json") is None  # exists: nothing written
    assert not masks_folder(tmp_path / "p.dgcproj.json").exists()

    path = timeline.project_view.save(tmp_path / "p.dgcproj.json", overwrite=True)
    document = json.loads(path.read_text())
    assert document["masks"] == [{"cube": "a/../../b", "path": "p-masks/a_.._.._b_mask.tif"}]
    reread = project_module.read_project(path)
    np.testing.assert_array_equal(reread.masks["a/../../b"].values, values)
