"""Take the screenshots of docs/training-panel.md (real training on the synthetic leaf sample).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_training_screenshots.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari
import torch
from qtpy.QtWidgets import QApplication
from screenshot_helpers import HERE, close_notifications, settle, wait  # this folder's helpers

from napari_dgc._qt.cube_layers import cube_source
from napari_dgc._qt.train_widget import TrainWidget
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.state.training import TrainStatus


def grab(viewer: napari.Viewer, name: str) -> None:
    """Let the 10 Hz redraw catch up, close notification toasts, save the window."""
    settle(0.6)
    close_notifications()
    QApplication.processEvents()
    viewer.screenshot(str(HERE / name), canvas_only=False)


def main() -> None:
    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    viewer.open_sample("napari-dgc", "synthetic_leaf")
    viewer.layers["ground truth"].visible = False
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train", area="right")
    # Three starts of 100 steps, then the selected one goes on: the timeline plots each start.
    config = TrainConfig(
        model=ModelConfig(n_clusters=4), steps=300, checkpoint_every=20, device="cpu"
    ).with_settings({"data.crop_size": 48, "data.batch_size": 2, "starts.count": 3, "starts.steps": 100})
    session, review, timeline = widget.session, widget.review, widget.timeline
    with tempfile.TemporaryDirectory() as tmp:
        # Scripted through the panel's models: the form shows the settings the session trains.
        session.start(config, Path(tmp) / "leaf-run", [cube_source(viewer.layers["synthetic leaf"])])
        wait(lambda: len(review.checkpoints) >= 5)
        wait(lambda: timeline.shown_checkpoint == review.checkpoint_ids()[-1])
        grab(viewer, "training-in-progress.png")

        # All three starts (5 checkpoints each) and three of the selected start's later ones.
        wait(lambda: len(review.checkpoints) >= 18, timeout_s=900)
        session.stop()
        wait(lambda: session.status is TrainStatus.IDLE, timeout_s=900)
        wait(lambda: len(review.figures) == len(review.checkpoints))
        pick = review.checkpoint_ids()[-2]
        review.select(pick)
        wait(lambda: timeline.shown_checkpoint == pick)
        review.choose_current()
        grab(viewer, "timeline-checkpoint-chosen.png")
        viewer.close()


if __name__ == "__main__":
    main()
