"""Screenshots of the merge panel's granularity slider and a mask from a Shapes layer, at 1280 x 800.

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_merge_tree_screenshots.py

Writes ``merge-granularity-1280x800.png`` (six clusters slid to three classes) and
``merge-shapes-mask-1280x800.png`` (a Shapes layer of two rectangles and a polygon, rasterised
into a mask) here, and prints each window size.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from take_layout_screenshots import scene_viewer, shoot  # this folder's helpers

from napari_dgc._qt.merge_widget import MergeWidget


def six_clusters(viewer) -> None:
    """Replace the hand-made four clusters by six: background and tissue split by brightness."""
    layer = viewer.layers["DGC clusters [synthetic leaf]"]
    labels = np.asarray(viewer.layers["ground truth"].data).astype(np.int32)
    brightness = np.asarray(viewer.layers["synthetic leaf"].data).mean(axis=0)
    clusters = np.zeros_like(labels)
    for truth, (dim, bright) in {0: (0, 1), 1: (2, 3), 2: (4, 4)}.items():
        inside = labels == truth
        threshold = np.median(brightness[inside])
        clusters[inside] = np.where(brightness[inside] > threshold, bright, dim)
    clusters[(labels == 0) & (np.arange(labels.shape[1]) >= 3 * labels.shape[1] // 4)] = 5
    layer.metadata["dgc_n_clusters"] = 6
    layer.data = clusters + 1


def main() -> None:
    viewer = scene_viewer()
    six_clusters(viewer)
    widget = MergeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Cluster merge", area="right")
    widget.granularity_view.slider.setValue(3)
    shoot(viewer, "merge-granularity-1280x800.png")

    rows, cols = viewer.layers["ground truth"].data.shape
    viewer.add_shapes(
        [
            np.array([[0.05, 0.40], [0.05, 0.60], [0.15, 0.60], [0.15, 0.40]]) * [rows, cols],
            np.array([[0.40, 0.35], [0.40, 0.55], [0.60, 0.55], [0.60, 0.35]]) * [rows, cols],
            np.array([[0.80, 0.40], [0.95, 0.45], [0.90, 0.62]]) * [rows, cols],
        ],
        shape_type=["rectangle", "rectangle", "polygon"],
        features={"class": ["background", "tissue", "background"]},
        edge_color="yellow",
        face_color="transparent",
        edge_width=2,
        name="annotations",
    )
    widget.mask_from_shapes()
    shoot(viewer, "merge-shapes-mask-1280x800.png")
    viewer.close()


if __name__ == "__main__":
    main()
