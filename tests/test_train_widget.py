"""The "DGC: Train" panel driving a real (tiny) training in napari."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from _training_helpers import N_CLUSTERS, add_cube_layer, tiny_config, tiny_cube
from napari.layers import Labels

from napari_dgc._qt import train_widget as train_widget_module
from napari_dgc._qt.cube_layers import LABEL_OFFSET, cluster_colors, labels_layer_name
from napari_dgc._qt.settings_form import ScientificSpinBox
from napari_dgc._qt.timeline_widget import TimelineWidget
from napari_dgc._qt.train_widget import TrainWidget
from napari_dgc.run_folder import RunDirectory
from napari_dgc.state.training import TrainingHistory, TrainStatus
from napari_dgc.training.events import ProgressEvent

TIMEOUT_MS = 120_000  # the CI CPU is shared: be generous, the tests finish as soon as they can


@pytest.fixture
def notifications(monkeypatch):
    """Messages the panel and its timeline show with ``show_error``."""
    messages: list[str] = []
    from napari_dgc._qt import timeline_widget

    monkeypatch.setattr(train_widget_module, "show_error", messages.append)
    monkeypatch.setattr(timeline_widget, "show_error", messages.append)
    return messages


def make_panel(viewer, qtbot, run_dir, **config) -> TrainWidget:
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train")
    widget.set_config(tiny_config(**config))
    widget.run_folder_edit.setText(str(run_dir))
    return widget


def wait_idle(qtbot, widget: TrainWidget) -> None:
    qtbot.waitUntil(
        lambda: widget.session.status is TrainStatus.IDLE and widget.worker is None, timeout=TIMEOUT_MS
    )


def test_train_pause_resume_timeline_choose_and_reopen(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    cube_layer = add_cube_layer(viewer, "leaf")
    other = add_cube_layer(viewer, "other leaf", seed=5)
    widget = make_panel(viewer, qtbot, tmp_path / "run", steps=40, checkpoint_every=4)
    widget.select_layers(["leaf"])
    # The user changes the selection during training: results must still land on "leaf".
    shown: list[tuple[str, str]] = []
    widget.timeline.checkpoint_shown.connect(
        lambda cid: shown.append((cid, viewer.layers[labels_layer_name("leaf")].metadata["dgc_checkpoint"]))
    )
    assert widget.start_training()
    viewer.layers.selection.active = other
    assert widget.session.status is TrainStatus.RUNNING

    qtbot.waitUntil(lambda: len({cid for cid, _ in shown}) >= 2, timeout=TIMEOUT_MS)
    labels = viewer.layers[labels_layer_name("leaf")]
    assert isinstance(labels, Labels)
    assert labels_layer_name("other leaf") not in viewer.layers
    assert all(cid == layer_cid for cid, layer_cid in shown)  # the layer followed each checkpoint
    assert labels.data.shape == cube_layer.data.shape[1:]
    assert labels.data.min() >= LABEL_OFFSET and labels.data.max() < N_CLUSTERS + LABEL_OFFSET
    assert labels.metadata["dgc_run"] == str(tmp_path / "run")
    assert labels.metadata["dgc_n_clusters"] == N_CLUSTERS
    assert labels.metadata["dgc_label_offset"] == LABEL_OFFSET
    assert labels.metadata["dgc_cube_layer"] == "leaf"

    # Pause: no more steps arrive until Resume.
    widget.pause_training()
    qtbot.waitUntil(lambda: widget.worker.is_paused, timeout=TIMEOUT_MS)
    paused_at = widget.session.history.latest.step
    qtbot.wait(800)
    assert widget.session.history.latest.step == paused_at
    assert widget.session.status is TrainStatus.PAUSED
    assert widget.resume_training()
    qtbot.waitUntil(lambda: widget.session.history.latest.step > paused_at, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert not notifications
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 40
    assert set(widget.session.history.losses)  # one plot per loss term
    assert set(widget.session.history.losses) <= set(widget.loss_plots.plots)

    # The timeline: 10 checkpoints; move it back, see the labels follow, pick one.
    timeline, review = widget.timeline, widget.review
    qtbot.waitUntil(lambda: len(review.checkpoints) == 10, timeout=TIMEOUT_MS)
    target = review.checkpoints[2].checkpoint_id
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS) as blocker:
        timeline.select_checkpoint(target)
    assert blocker.args == [target]
    assert labels.metadata["dgc_checkpoint"] == target
    expected = review.review.labels(target)
    key = str(cube_layer.unique_id)
    np.testing.assert_array_equal(labels.data, expected[key] + LABEL_OFFSET)
    timeline.use_current_checkpoint()
    assert RunDirectory.open(tmp_path / "run").chosen_checkpoint == target
    # After training, the review worker fills in every checkpoint's figures.
    qtbot.waitUntil(lambda: len(review.figures) == 10, timeout=TIMEOUT_MS)
    nmi = [review.figures[i.checkpoint_id].nmi_to_previous for i in review.checkpoints]
    assert nmi[0] is None and all(0.0 <= value <= 1.0 + 1e-9 for value in nmi[1:])

    # A fresh viewer opens the run folder: the chosen checkpoint is shown on the same cube.
    fresh = make_napari_viewer()
    fresh_cube = add_cube_layer(fresh, "leaf")
    reopened = TimelineWidget(fresh)
    fresh.window.add_dock_widget(reopened)
    with qtbot.waitSignal(reopened.checkpoint_shown, timeout=TIMEOUT_MS) as blocker:
        assert reopened.open_run(tmp_path / "run")
    assert blocker.args == [target]
    fresh_labels = fresh.layers[labels_layer_name("leaf")]
    np.testing.assert_array_equal(fresh_labels.data, labels.data)
    assert reopened.model.sources[str(fresh_cube.unique_id)].layer is fresh_cube
    assert not notifications


def test_stop_then_resume_continues_the_run(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(viewer, qtbot, tmp_path / "run", steps=400, checkpoint_every=2)
    assert gc.get_freeze_count() == 0
    assert widget.start_training()
    qtbot.waitUntil(lambda: len(widget.review.checkpoints) >= 2, timeout=TIMEOUT_MS)
    # While training, the objects from before Start are out of the garbage collector's scans...
    assert gc.get_freeze_count() > 0
    widget.stop_training()
    wait_idle(qtbot, widget)
    assert gc.get_freeze_count() == 0  # ...and collectable again once it stops
    run = RunDirectory.open(tmp_path / "run")
    written = run.checkpoints()
    assert 2 <= len(written) < 200
    run.load_model(written[-1].checkpoint_id)  # every listed checkpoint stays usable
    assert widget.resume_button.isEnabled() and widget.start_button.isEnabled()

    # Resume continues from the latest checkpoint; shorten the run so it ends soon.
    widget.form.fields["steps"].value = written[-1].step + 4
    assert widget.resume_training()
    wait_idle(qtbot, widget)
    assert not notifications
    steps = [info.step for info in run.checkpoints()]
    assert steps[: len(written)] == [info.step for info in written]
    assert steps[-1] == written[-1].step + 4


def test_several_starts_show_on_the_progress_bar_timeline_and_notification(
    make_napari_viewer, qtbot, tmp_path, notifications, monkeypatch
):
    infos: list[str] = []
    monkeypatch.setattr(train_widget_module, "show_info", infos.append)
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(
        viewer, qtbot, tmp_path / "run", steps=6, checkpoint_every=2, starts__count=2, starts__steps=4
    )
    assert widget.train_config().starts.count == 2 and widget.train_config().starts.steps == 4
    assert widget.start_training()
    assert widget.progress_bar.maximum() == 10  # 2 starts x 4 steps, then steps 5-6 of the winner
    wait_idle(qtbot, widget)
    assert not notifications
    assert widget.progress_bar.value() == 10
    run = RunDirectory.open(tmp_path / "run")
    selected = run.selected_start
    # Starts are numbered from 0 everywhere, as in the checkpoint ids (start1-step-000002).
    assert any(f"Start {selected} continues" in message for message in infos)
    # The history is on the run's timeline: every step of both starts, in order.
    assert widget.session.history.steps.tolist() == list(range(1, 11))

    timeline, review = widget.timeline, widget.review
    qtbot.waitUntil(lambda: len(review.checkpoints) == 5, timeout=TIMEOUT_MS)
    assert [info.run_step for info in review.checkpoints] == [2, 4, 6, 8, 10]
    assert [info.start for info in review.checkpoints] == [0, 0, 1, 1, selected]
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS):
        timeline.select_checkpoint(review.checkpoints[2].checkpoint_id)
    assert "start1-step-000002  (3/5, start 1, step 2; run step 6/10)" in timeline.checkpoint_label.text()
    assert timeline.plots.plot("NMI to previous checkpoint").series_names() == ["start 0", "start 1"]
    # The first checkpoint of each start has no previous one of its own.
    qtbot.waitUntil(lambda: len(review.figures) == 5, timeout=TIMEOUT_MS)
    nmi = [review.figures[info.checkpoint_id].nmi_to_previous for info in review.checkpoints]
    assert nmi[0] is None and nmi[2] is None and nmi[4] is not None


def test_training_error_is_notified_and_panel_returns_to_idle(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "small", rows=12, cols=12)
    widget = make_panel(viewer, qtbot, tmp_path / "run", data__crop_size=16)
    # Refused before anything is created (issue 15, item 9; tests/test_gui_validation.py).
    assert not widget.start_training()
    wait_idle(qtbot, widget)
    assert len(notifications) == 1
    assert "crop" in notifications[0].lower()
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
    assert gc.get_freeze_count() == 0  # a failed start unfreezes too
    assert widget.start_button.isEnabled()
    assert widget.progress_label.text() == "idle"


def test_start_refuses_without_cube_and_on_existing_run(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = make_panel(viewer, qtbot, tmp_path / "run")
    assert not widget.start_button.isEnabled()
    assert not widget.start_training()
    assert notifications == ["Tick at least one cube layer to train on"]

    add_cube_layer(viewer, "leaf")
    assert widget.start_button.isEnabled()  # the new layer is listed and ticked
    assert widget.start_training()
    wait_idle(qtbot, widget)
    notifications.clear()
    # Same folder again: refused before the worker starts (the engine would refuse too).
    assert not widget.start_training()
    wait_idle(qtbot, widget)
    assert len(notifications) == 1 and "already" in notifications[0]


def test_closing_napari_stops_training_cleanly(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(viewer, qtbot, tmp_path / "run", steps=100_000, checkpoint_every=2)
    assert widget.start_training()
    qtbot.waitUntil(lambda: len(widget.review.checkpoints) >= 1, timeout=TIMEOUT_MS)
    worker = widget.worker
    viewer.close()
    assert worker.done.is_set()  # closing waited for the worker to finish its clean stop
    assert gc.get_freeze_count() == 0
    run = RunDirectory.open(tmp_path / "run")
    infos = run.checkpoints()
    assert 1 <= len(infos) < 50_000
    run.load_model(infos[-1].checkpoint_id)
    assert not notifications


def test_plain_image_layer_needs_band_axis_confirmation(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    cube = tiny_cube()
    viewer.add_image(cube, name="band-last array")  # (rows, cols, bands): no wavelengths
    widget = make_panel(viewer, qtbot, tmp_path / "run")
    item = widget.layer_list.item(0)
    assert "band axis" in item.text()
    assert not widget.start_button.isEnabled()  # not ticked until the user confirms
    widget.band_axis_combo.setCurrentIndex(widget.band_axis_combo.findData(2))
    widget.select_layers(["band-last array"])
    (source,) = widget.ticked_sources()
    np.testing.assert_array_equal(source.cube, cube)


def test_settings_round_trip_and_scientific_spin_box(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    config = tiny_config(optim__learning_rate=3e-5, losses__weight_orth=0.002, seed=11, data__batch_size=2)
    widget.set_config(config)
    assert widget.train_config().to_dict() == config.to_dict()
    assert widget.form.fields["optim.learning_rate"].native.text() == "3e-05"
    # The preparation settings too; an empty file field is no reference (null), not "".
    prepared = tiny_config(prep__white="/data/white.hdr", prep__bands="450:950", prep__binning=2)
    widget.set_config(prepared)
    assert widget.form.fields["prep.dark"].value == ""
    assert widget.train_config().to_dict() == prepared.to_dict()
    spin = ScientificSpinBox(1e-9, 1.0)
    spin.setValue(1e-4)
    spin.stepBy(1)
    assert spin.value() == pytest.approx(2e-4)
    assert widget.form.fields["device"].choices[0] == "auto"


def test_form_is_generated_from_the_configuration(make_napari_viewer):
    from magicgui.widgets import ComboBox, SpinBox

    from napari_dgc._qt.settings_form import ScientificFloatSpinBox
    from napari_dgc.config import TrainConfig, get_setting, settings_of

    widget = TrainWidget(make_napari_viewer())
    labelled = [info for info in settings_of() if info.label is not None]
    assert list(widget.form.fields) == [info.key for info in labelled]
    basic, advanced = widget.form.basic, widget.form.advanced
    for info in labelled:
        field = widget.form.fields[info.key]
        assert field.label == info.label and field.tooltip == info.help
        assert field in (basic if info.basic else advanced)
        default = get_setting(TrainConfig(), info.key)  # the config's default (null: empty text)
        assert field.value == ("" if default is None and info.kind is str else default)
        if info.kind is int:
            assert isinstance(field, SpinBox) and field.min == (info.minimum or 0)
        elif info.kind is float:
            assert isinstance(field, ScientificFloatSpinBox)
    assert isinstance(widget.form.fields["device"], ComboBox)
    assert (
        widget.train_config().to_dict()
        == TrainConfig().with_settings({"device": widget.form.fields["device"].choices[0]}).to_dict()
    )


def test_resume_a_cli_run_made_with_other_model_settings(make_napari_viewer, qtbot, tmp_path, notifications):
    from napari_dgc.cli import main

    cube_file = tmp_path / "leaf.npy"
    np.save(cube_file, tiny_cube(seed=1).astype(np.float32))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(cube_file),
                "--out",
                str(run),
                "--clusters",
                str(N_CLUSTERS),
                "--steps",
                "4",
                "--checkpoint-every",
                "2",
                "--starts",
                "1",
                "--crop-size",
                "16",
                "--batch-size",
                "1",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--quiet",
                "--set",
                "model.spectral_channels=8",
            ]
        )
        == 0
    )

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train")
    with qtbot.waitSignal(widget.timeline.checkpoint_shown, timeout=TIMEOUT_MS):
        assert widget.timeline.open_run(run)  # no cube layer yet: the run's own file is opened
    assert widget.session.run_dir == run.resolve() or widget.session.run_dir == run
    assert widget.session.config.model.spectral_channels == 8
    assert widget.resume_button.isEnabled()
    widget.form.fields["steps"].value = 8
    assert widget.resume_training()
    wait_idle(qtbot, widget)
    assert not notifications
    reopened = RunDirectory.open(run)
    assert [info.step for info in reopened.checkpoints()] == [2, 4, 6, 8]
    assert reopened.config.model.spectral_channels == 8
    qtbot.waitUntil(lambda: len(widget.review.checkpoints) == 4, timeout=TIMEOUT_MS)


def test_history_eta_and_cluster_colours():
    history = TrainingHistory()
    assert history.eta_seconds() is None
    history.add(ProgressEvent(1, 11, {"total": 1.0}, 3, 1e-4, 0.1))
    time.sleep(0.05)
    history.add(ProgressEvent(2, 11, {"total": 0.9, "late": 2.0}, 2, 1e-4, 0.2))
    assert history.steps.tolist() == [1, 2]
    assert np.isnan(history.losses["late"][0]) and history.losses["late"][1] == 2.0
    eta = history.eta_seconds()
    assert eta is not None and 9 * 0.04 < eta < 9 * 5
    for k in (2, 16, 40):
        colors = cluster_colors(k)
        assert len(set(colors)) == k


def test_history_grows_past_its_first_capacity_and_pads_missing_terms():
    history = TrainingHistory()
    for step in range(1, 1001):
        losses = {"total": 1.0 / step} if step % 100 else {}  # every 100th step reports nothing
        history.add(ProgressEvent(step, 1000, losses, step % 5, 1e-4, 0.01 * step))
    assert history.steps.tolist() == list(range(1, 1001))
    total = history.losses["total"]
    assert total.shape == (1000,) and np.isnan(total[99]) and total[98] == pytest.approx(1 / 99)
    assert np.isnan(total).sum() == 10
    assert history.active_in_step[:6].tolist() == [1, 2, 3, 4, 0, 1]
    with pytest.raises(ValueError):
        history.steps[0] = 7  # the plots keep views: they must not be written through


def test_decimation_keeps_spikes_gaps_and_order():
    from napari_dgc._qt.plots import _decimate

    x = np.arange(10_000, dtype=np.float64)
    y = np.sin(x / 500.0)
    y[1234], y[8765] = 40.0, -40.0
    y[3000:5000] = np.nan
    xs, ys = _decimate(x, y, 200)
    assert xs.size <= 200 and np.all(np.diff(xs) >= 0)
    assert 40.0 in ys and -40.0 in ys
    assert np.isnan(ys[(xs >= 3100) & (xs < 4900)]).all()  # the gap is still drawn as a gap
    assert np.array_equal(_decimate(x[:150], y[:150], 200)[1], y[:150])  # few points: unchanged


def test_long_series_with_gaps_paints(qtbot):
    from napari_dgc._qt.plots import SparklineGrid, _last_finite

    grid = SparklineGrid(columns=1)
    qtbot.addWidget(grid)
    grid.resize(220, 84)
    plot = grid.plot("loss")
    steps = np.arange(1, 100_001)
    late = np.full(steps.size, np.nan)
    late[50_000:] = np.linspace(2.0, 1.0, 50_000)  # a term that appears half-way
    total = np.cos(steps / 1000.0)
    total[-3:] = np.nan  # the newest values not reported
    plot.set_series([("total", steps, total), ("late", steps, late)])
    plot.set_x_range(0, steps[-1])
    assert not grid.grab().isNull()  # an exception in a paint method would abort the test run
    assert _last_finite(total) == pytest.approx(np.cos(99_997 / 1000.0))
    assert _last_finite(late) == 1.0 and _last_finite(np.full(3, np.nan)) is None


def test_short_number_keeps_large_figures_narrow():
    from napari_dgc._qt.plots import short_number

    assert short_number(60_214.0) == "60.2k"
    assert short_number(8_728.0) == "8.73k"
    assert short_number(2_500_000.0, 2) == "2.5M"
    assert short_number(-41_218.0) == "-41.2k"
    assert short_number(0.974) == "0.974" and short_number(31.0, 2) == "31"
    assert short_number(120_400.0, 2) == "120k"  # never "1.2e+02k"
    assert short_number(412_345.0) == "412k"


def test_click_on_a_plot_gives_the_step_under_it(qtbot):
    import pyqtgraph as pg
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_dgc._qt.plots import SparklineGrid

    grid = SparklineGrid(columns=2)
    qtbot.addWidget(grid)
    grid.resize(600, 100)
    other = grid.plot("other")  # a click on one plot of a grid reaches that plot only
    plot = grid.plot("loss")
    grid.show()
    plot.set_series([("total", np.arange(101), np.linspace(1.0, 0.0, 101))])
    plot.set_x_range(0, 100)
    plot.set_markers([(40, None, "dash"), (60, "#ffd700", "solid")])
    qtbot.waitExposed(grid)
    where = grid.mapFromScene(plot.vb.mapViewToScene(pg.Point(75, 0.5)))
    other_clicks = []
    other.clicked.connect(other_clicks.append)
    with qtbot.waitSignal(plot.clicked) as blocker:
        QTest.mouseClick(grid.viewport(), Qt.LeftButton, pos=where)
    assert other_clicks == []
    assert blocker.args[0] == pytest.approx(75, abs=1)
    assert plot.markers() == [(40.0, None, "dash"), (60.0, "#ffd700", "solid")]
    assert plot.latest_values() == [0.0]


def test_plots_are_built_ahead_and_reused_after_clear(qtbot, monkeypatch):
    from napari_dgc._qt import plots

    grid = plots.SparklineGrid(columns=2)
    qtbot.addWidget(grid)
    grid.prepare(3)
    built = []
    original_init = plots.SparklinePlot.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(plots.SparklinePlot, "__init__", counting_init)
    qtbot.waitUntil(lambda: len(built) == 3)  # one per turn of the event loop, then it stops
    qtbot.wait(50)
    assert len(built) == 3
    loss = grid.plot("loss", tooltip="a loss")
    grid.plot("usage", y_range=(0.0, 1.0))
    grid.plot("active")
    assert len(built) == 3  # the first plots of a training cost the GUI thread nothing to build
    assert loss.title == "loss" and loss.toolTip() == "a loss" and loss.series_names() == []
    loss.set_series([("total", np.arange(5), np.linspace(1.0, 0.0, 5))])
    loss.set_markers([(2, None, "dash")])

    grid.remove_plots()  # a new training: the plots become spares, emptied when taken again
    again = grid.plot("other")
    assert len(built) == 3 and list(grid.plots) == ["other"]
    assert [item for item in grid.ci.items if isinstance(item, plots.SparklinePlot)] == [again]
    assert again.series_names() == [] and again.markers() == [] and again.title == "other"
    grid.plot("fourth")
    grid.plot("fifth")
    grid.plot("sixth")
    assert len(built) == 4  # three spares were left; the fourth new name builds a plot
