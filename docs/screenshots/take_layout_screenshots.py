"""Screenshots of the three panels in a 1280 x 800 napari window (docs, issue 15 item 8).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_layout_screenshots.py

Writes ``train-panel-1280x800.png``, ``timeline-1280x800.png``, ``merge-panel-1280x800.png``
and ``all-panels-1280x800.png`` (the three docked together) here, and prints each window size:
the panels must fit without growing the window.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_dgc._qt.merge_widget import MergeWidget
from napari_dgc._qt.timeline_widget import TimelineWidget
from napari_dgc._qt.train_widget import TrainWidget

HERE = Path(__file__).resolve().parent
SIZE = (1280, 800)


def settle(seconds: float = 0.6) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)


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


def main() -> None:
    panels = {
        "train-panel-1280x800.png": ("DGC: Train", TrainWidget),
        "timeline-1280x800.png": ("DGC: Checkpoints", TimelineWidget),
        "merge-panel-1280x800.png": ("DGC: Cluster merge", MergeWidget),
    }
    for file, (title, widget_class) in panels.items():
        viewer = scene_viewer()
        viewer.window.add_dock_widget(widget_class(viewer), name=title, area="right")
        shoot(viewer, file)
        viewer.close()
    viewer = scene_viewer()
    for title, widget_class in panels.values():
        viewer.window.add_dock_widget(widget_class(viewer), name=title, area="right")
    shoot(viewer, "all-panels-1280x800.png")
    viewer.close()


if __name__ == "__main__":
    main()
