"""Screenshots of the three panels in a 1280 x 800 napari window (docs, issue 15 item 8).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_layout_screenshots.py

Writes ``train-panel-1280x800.png``, ``timeline-1280x800.png``, ``merge-panel-1280x800.png``
and ``all-panels-1280x800.png`` (the three docked together) here, and prints each window size:
the panels must fit without growing the window.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari
import numpy as np
from screenshot_helpers import HERE, SIZE, settle, wait  # this folder's helpers

from napari_dgc._qt.merge_widget import MergeWidget
from napari_dgc._qt.timeline_widget import TimelineWidget
from napari_dgc._qt.train_widget import TrainWidget
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.training.loop import train


def scene_viewer() -> napari.Viewer:
    """The synthetic leaf sample with a hand-made 4-cluster layer (what training would give)."""
    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    viewer.open_sample("napari-dgc", "synthetic_leaf")
    truth = viewer.layers["ground truth"]
    truth.visible = False
    labels = np.asarray(truth.data).astype(np.int32)
    clusters = labels.copy()
    clusters[(labels == 0) & (np.arange(labels.shape[1]) >= labels.shape[1] // 2)] = 3
    viewer.add_labels(
        clusters + 1,
        name="DGC clusters [synthetic leaf]",
        opacity=0.6,
        metadata={
            "dgc_run": "/runs/leaf-run",
            "dgc_checkpoint": "step-000300",
            "dgc_cube_layer": "synthetic leaf",
            "dgc_n_clusters": 4,
            "dgc_label_offset": 1,
        },
    )
    return viewer


def shoot(viewer: napari.Viewer, name: str) -> tuple[int, int]:
    settle()
    viewer.screenshot(str(HERE / name), canvas_only=False)
    window = viewer.window.geometry()
    print(f"{name}: window {window[2]} x {window[3]}", file=sys.stderr)
    return window[2], window[3]


def short_run(folder: Path) -> Path:
    """A 60-step run on the sample's scene, so the timeline shows real checkpoints, their
    figures and the recommended one."""
    config = TrainConfig(model=ModelConfig(n_clusters=4)).with_settings(
        {"steps": 60, "checkpoint_every": 10, "data.crop_size": 32, "data.batch_size": 2, "device": "cpu"}
    )
    run = folder / "leaf-run"
    for _ in train([make_leaf_scene(256, 256, seed=0).cube], config, run):
        pass
    return run


def main() -> None:
    panels = {
        "train-panel-1280x800.png": ("DGC: Train", TrainWidget),
        "timeline-1280x800.png": ("DGC: Checkpoints", TimelineWidget),
        "merge-panel-1280x800.png": ("DGC: Cluster merge", MergeWidget),
    }
    with tempfile.TemporaryDirectory() as folder:
        run = short_run(Path(folder))
        for file, (title, widget_class) in panels.items():
            viewer = scene_viewer()
            widget = widget_class(viewer)
            viewer.window.add_dock_widget(widget, name=title, area="right")
            if isinstance(widget, TimelineWidget):
                shown: list[str] = []
                widget.checkpoint_shown.connect(shown.append)
                widget.open_run(run)
                wait(lambda: shown)  # noqa: B023 - called before the loop moves on
                settle(2.0)  # the figures of the other checkpoints
            shoot(viewer, file)
            viewer.close()
    viewer = scene_viewer()
    for title, widget_class in panels.values():
        viewer.window.add_dock_widget(widget_class(viewer), name=title, area="right")
    shoot(viewer, "all-panels-1280x800.png")
    viewer.close()


if __name__ == "__main__":
    main()
