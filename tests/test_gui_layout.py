"""Panels fit a 1280 x 800 window without growing it (issue 15, item 8)."""

from __future__ import annotations

import numpy as np
import pytest
from _training_helpers import add_cube_layer

from napari_dgc._qt.merge_parts import MIN_TABLE_ROWS
from napari_dgc._qt.merge_widget import MergeWidget
from napari_dgc._qt.timeline_widget import TimelineWidget
from napari_dgc._qt.train_widget import TrainWidget

SIZE = (1280, 800)


def add_clusters(viewer, cube="leaf", k=6):
    rows, cols = viewer.layers[cube].data.shape[-2:]
    clusters = (np.arange(rows * cols).reshape(rows, cols) % k).astype(np.int32)
    viewer.add_labels(
        clusters + 1,
        name=f"DGC clusters [{cube}]",
        metadata={
            "dgc_run": "/runs/demo",
            "dgc_checkpoint": "step-000010",
            "dgc_cube_layer": cube,
            "dgc_n_clusters": k,
            "dgc_label_offset": 1,
        },
    )


def fully_visible(widget) -> bool:
    """Whether no ancestor (scroll area, dock) clips ``widget``."""
    return widget.visibleRegion().boundingRect().size() == widget.size()


def rows_shown(table) -> float:
    return table.viewport().height() / table.verticalHeader().defaultSectionSize()


@pytest.fixture
def window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*SIZE)
    add_cube_layer(viewer, "leaf")
    add_clusters(viewer)
    qtbot.wait(50)
    assert tuple(viewer.window.geometry()[2:]) == SIZE
    return viewer


def settle(qtbot):
    qtbot.wait(300)


def test_three_docks_keep_the_window_size(window, qtbot):
    viewer = window
    train, timeline, merge = TrainWidget(viewer), TimelineWidget(viewer), MergeWidget(viewer)
    viewer.window.add_dock_widget(train, name="DGC: Train", area="right")
    viewer.window.add_dock_widget(timeline, name="DGC: Checkpoints", area="right")
    viewer.window.add_dock_widget(merge, name="DGC: Cluster merge", area="right")
    settle(qtbot)
    assert tuple(viewer.window.geometry()[2:]) == SIZE
    assert merge.window().size().width() == SIZE[0] and merge.window().size().height() == SIZE[1]
    # Stacked in 800 px the panels scroll; every dock stays shorter than the window.
    for panel in (train, timeline, merge):
        assert panel.minimumSizeHint().height() < SIZE[1] // 2


def test_train_panel_is_not_clipped_on_the_right(window, qtbot):
    viewer = window
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="DGC: Train", area="right")
    settle(qtbot)
    assert tuple(viewer.window.geometry()[2:]) == SIZE
    for button in (train.start_button, train.pause_button, train.resume_button, train.stop_button):
        assert fully_visible(button), button.text()
    assert fully_visible(train.timeline.open_button)
    assert fully_visible(train.band_axis_combo)


def test_merge_panel_tables_show_five_rows(window, qtbot):
    viewer = window
    merge = MergeWidget(viewer)
    viewer.window.add_dock_widget(merge, name="DGC: Cluster merge", area="right")
    settle(qtbot)
    assert tuple(viewer.window.geometry()[2:]) == SIZE
    assert merge.clusters_view.table.rowCount() == 6
    assert rows_shown(merge.clusters_view.table) >= MIN_TABLE_ROWS
    assert rows_shown(merge.iou_view.table) >= MIN_TABLE_ROWS
