"""Validation before anything is created (issue 15, item 9): a refused Start leaves nothing behind."""

from __future__ import annotations

import logging

import napari
import numpy as np
import pytest
from _training_helpers import add_cube_layer, tiny_config
from napari.layers import Labels

from napari_dgc._qt import train_widget as train_widget_module
from napari_dgc._qt.train_widget import TrainWidget
from napari_dgc.state.training import TrainStatus

TIMEOUT_MS = 120_000


@pytest.fixture
def notifications(monkeypatch):
    messages: list[str] = []
    from napari_dgc._qt import timeline_widget

    monkeypatch.setattr(train_widget_module, "show_error", messages.append)
    monkeypatch.setattr(timeline_widget, "show_error", messages.append)
    return messages


def make_panel(viewer, run_dir, **config) -> TrainWidget:
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train")
    widget.set_config(tiny_config(**config))
    widget.run_folder_edit.setText(str(run_dir))
    return widget


def assert_refused_cleanly(qtbot, viewer, widget, notifications, caplog, *reason_words):
    """Start refused: one whole message (notification and panel), no layer, no worker, no folder."""
    layers_before = [layer.name for layer in viewer.layers]
    with caplog.at_level(logging.WARNING):
        assert not widget.start_training()
    qtbot.wait(200)  # nothing is launched later either
    assert widget.worker is None
    assert widget.session.status is TrainStatus.IDLE
    assert [layer.name for layer in viewer.layers] == layers_before
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
    assert len(notifications) == 1
    message = notifications[0]
    assert message.startswith("Cannot start training: ")
    for word in reason_words:
        assert word in message
    # The panel shows the whole message, not cut; no traceback on the console.
    assert widget.error_label.isVisibleTo(widget) and widget.error_label.text() == message
    assert "Traceback" not in caplog.text
    # Buttons: Start can be tried again; nothing to resume, pause or stop.
    assert widget.start_button.isEnabled()
    assert not widget.resume_button.isEnabled()
    assert not widget.pause_button.isEnabled() and not widget.stop_button.isEnabled()
    return message


def test_crop_larger_than_a_cube_is_refused_before_anything_is_created(
    make_napari_viewer, qtbot, tmp_path, notifications, caplog
):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    add_cube_layer(viewer, "small", rows=12, cols=12)
    widget = make_panel(viewer, tmp_path / "run", data__crop_size=16)
    widget.select_layers(["leaf", "small"])
    message = assert_refused_cleanly(qtbot, viewer, widget, notifications, caplog, "12 x 12", "crop")
    assert "small is 12 x 12" in message  # the cube the user sees named
    assert not (tmp_path / "run").exists()


def test_mixed_band_counts_are_refused_before_anything_is_created(
    make_napari_viewer, qtbot, tmp_path, notifications, caplog
):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    rng = np.random.default_rng(0)
    viewer.add_layer(
        napari.layers.Layer.create(
            rng.random((5, 32, 32), dtype=np.float32),
            {"name": "five bands", "metadata": {"dgc_cube_path": "five.npy", "dgc_band_axis": 0}},
            "image",
        )
    )
    widget = make_panel(viewer, tmp_path / "run")
    widget.select_layers(["leaf", "five bands"])
    message = assert_refused_cleanly(qtbot, viewer, widget, notifications, caplog, "bands")
    assert "5 bands" in message and "16" in message
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_refused_before_anything_is_created(
    make_napari_viewer, qtbot, tmp_path, notifications, caplog
):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    widget = make_panel(viewer, run)
    assert_refused_cleanly(qtbot, viewer, widget, notifications, caplog, "already")
    assert (run / "run.json").read_text() == "{}"

    notifications.clear()
    file = tmp_path / "a file"
    file.write_text("x")
    widget.run_folder_edit.setText(str(file))
    assert_refused_cleanly(qtbot, viewer, widget, notifications, caplog, "is a file")


def test_invalid_settings_are_refused_with_every_field_named(make_napari_viewer, qtbot, tmp_path, caplog):
    from napari_dgc.state.training import TrainingSession

    session = TrainingSession()
    failures: list[str] = []
    session.failed.connect(failures.append)
    requests = []
    session.start_requested.connect(requests.append)
    assert not session.start(tiny_config(), tmp_path / "run", [])
    assert not requests and failures and "cube" in failures[0]


def test_a_good_start_after_a_refused_one_clears_the_error(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(viewer, tmp_path / "run", data__crop_size=64)
    assert not widget.start_training()
    assert widget.error_label.isVisibleTo(widget)
    widget.set_config(tiny_config())
    assert widget.start_training()
    assert not widget.error_label.isVisibleTo(widget)
    qtbot.waitUntil(
        lambda: widget.session.status is TrainStatus.IDLE and widget.worker is None, timeout=TIMEOUT_MS
    )
    assert len(notifications) == 1


def test_a_training_that_fails_before_its_first_checkpoint_leaves_no_layer(
    make_napari_viewer, qtbot, tmp_path, notifications, caplog
):
    """A problem only the worker can find (a NaN pixel in a crop): the empty cluster layer goes."""
    viewer = make_napari_viewer()
    layer = add_cube_layer(viewer, "leaf")
    data = np.array(layer.data)
    data[:, :, :] = np.nan  # every crop holds NaN: found when the first crop is read
    layer.data = data
    widget = make_panel(viewer, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert widget.start_training()
        qtbot.waitUntil(
            lambda: widget.session.status is TrainStatus.IDLE and widget.worker is None, timeout=TIMEOUT_MS
        )
    assert len(notifications) == 1 and "NaN" in notifications[0]
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
    assert "Traceback" not in caplog.text  # a user error: its message, no traceback
    assert widget.error_label.text() == notifications[0]
    assert widget.start_button.isEnabled()
    assert not (tmp_path / "run" / "run.json").exists()
    assert not widget.resume_button.isEnabled()  # no run to resume
