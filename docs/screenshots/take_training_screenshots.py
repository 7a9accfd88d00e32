"""Take the screenshots of docs/training-panel.md (real training on the synthetic leaf sample).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_training_screenshots.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari  # noqa: E402
import torch  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_dgc._qt.train_state import TrainStatus  # noqa: E402
from napari_dgc._qt.train_widget import TrainWidget  # noqa: E402
from napari_dgc.model.network import ModelConfig  # noqa: E402
from napari_dgc.config import TrainConfig  # noqa: E402

HERE = Path(__file__).resolve().parent


def process_until(condition, timeout_s: float = 900) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            sys.exit("screenshot script: timed out")
        QApplication.processEvents()
        time.sleep(0.01)


def grab(viewer: napari.Viewer, name: str) -> None:
    """Let the 10 Hz redraw catch up, close notification toasts, save the window."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.02)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    QApplication.processEvents()
    viewer.window._qt_window.grab().save(str(HERE / name))


def main() -> None:
    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-dgc", "synthetic_leaf")
    viewer.layers["ground truth"].visible = False
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train", area="right")
    # Three starts of 100 steps, then the selected one goes on: the timeline plots each start.
    widget.set_config(TrainConfig(model=ModelConfig(n_clusters=4), steps=300, checkpoint_every=20,
                                  device="cpu").with_settings(
        {"data.crop_size": 48, "data.batch_size": 2, "starts.count": 3, "starts.steps": 100}))
    with tempfile.TemporaryDirectory() as tmp:
        widget.run_folder_edit.setText(str(Path(tmp) / "leaf-run"))
        widget.start_training()
        process_until(lambda: len(widget.timeline.checkpoints) >= 5)
        process_until(lambda: widget.timeline.shown_checkpoint == widget.timeline.checkpoints[-1].checkpoint_id)
        grab(viewer, "training-in-progress.png")

        # All three starts (5 checkpoints each) and three of the selected start's later ones.
        process_until(lambda: len(widget.timeline.checkpoints) >= 18)
        widget.stop_training()
        process_until(lambda: widget.state.status is TrainStatus.IDLE)
        timeline = widget.timeline
        process_until(lambda: len(timeline.figures) == len(timeline.checkpoints))
        pick = len(timeline.checkpoints) - 2
        timeline.select_checkpoint(timeline.checkpoints[pick].checkpoint_id)
        process_until(lambda: timeline.shown_checkpoint == timeline.checkpoints[pick].checkpoint_id)
        timeline.use_current_checkpoint()
        grab(viewer, "timeline-checkpoint-chosen.png")
        viewer.close()


if __name__ == "__main__":
    main()
