"""Nothing blocks the GUI (issue 15, item 7): docking without torch, Start at once, exact Pause."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from _training_helpers import add_cube_layer, tiny_config

from napari_dgc._qt.train_widget import TrainWidget
from napari_dgc.state.training import TrainStatus

TIMEOUT_MS = 120_000

#: The issue asks < 0.2 s on a quiet machine (benchmarks/bench_gui.py measures it); the shared
#: CI machine gets a generous bound, still far below the 2-7 s of a Start that imported torch.
START_BOUND_S = 1.0


@pytest.mark.parametrize(
    "module",
    [
        "napari_dgc._qt.train_widget",
        "napari_dgc._qt.timeline_widget",
        "napari_dgc._qt.merge_widget",
        "napari_dgc._qt.training_runner",
        "napari_dgc._qt.workers",
        "napari_dgc.state.training",
        "napari_dgc.state.review",
        "napari_dgc.state.merge",
    ],
)
def test_panel_modules_import_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"{module} imports torch at module level"


def make_panel(viewer, run_dir, **config) -> TrainWidget:
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train")
    widget.set_config(tiny_config(**config))
    widget.run_folder_edit.setText(str(run_dir))
    return widget


def test_start_answers_at_once_and_training_follows(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf", rows=64, cols=64)
    widget = make_panel(viewer, tmp_path / "run", steps=4, checkpoint_every=2)
    started = time.perf_counter()
    qtbot.mouseClick(widget.start_button, 1)  # Qt.LeftButton
    elapsed = time.perf_counter() - started
    assert elapsed < START_BOUND_S, f"Start blocked the GUI for {elapsed:.2f} s"
    assert widget.session.status is TrainStatus.RUNNING
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: widget.session.status is TrainStatus.IDLE, timeout=TIMEOUT_MS)
    assert widget.session.history.latest.run_step == 4
    assert len(widget.review.checkpoints) == 2


def test_pause_stops_at_the_current_step(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(viewer, tmp_path / "run", steps=5000, checkpoint_every=5000)
    assert widget.start_training()
    qtbot.waitUntil(
        lambda: widget.session.history.latest is not None and widget.session.history.latest.run_step >= 5,
        timeout=TIMEOUT_MS,
    )
    qtbot.wait(150)
    qtbot.mouseClick(widget.pause_button, 1)
    # What the user sees when clicking: the progress bar shows the step recorded now...
    shown = widget.progress_bar.value()
    assert shown == widget.session.history.latest.run_step
    qtbot.waitUntil(lambda: widget.worker.is_paused, timeout=TIMEOUT_MS)
    qtbot.wait(300)
    final = widget.session.history.latest.run_step
    # ...and the training stops after the step it was computing then, at most one more.
    assert shown <= final <= shown + 1
    assert widget.progress_bar.value() == final
    assert f"paused after step {final}" in widget.progress_label.text()
    qtbot.wait(600)
    assert widget.session.history.latest.run_step == final
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_stop_before_the_worker_launched_returns_to_idle(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf")
    widget = make_panel(viewer, tmp_path / "run")
    assert widget.start_training()
    widget.stop_training()  # before the event loop launched the worker
    assert widget.session.status is TrainStatus.IDLE
    qtbot.wait(200)
    assert widget.worker is None
    assert not (tmp_path / "run" / "run.json").exists()
