"""Regenerate the screenshots of docs/merge-and-evaluate.md (run under Xvfb, ~2 min on 2 CPUs).

    xvfb-run -a .venv/bin/python docs/screenshots/make_merge_screenshots.py [--run RUN]

Trains (or, with ``--run``, reuses a run trained the same way) a short DGC run on the
synthetic leaf scene, shows the clusters of the chosen checkpoint, merges them in the
"DGC: Cluster merge" panel (by scripting its model) and scores them against the scene's
ground truth.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

import napari
import numpy as np
import torch
from qtpy.QtWidgets import QApplication
from screenshot_helpers import HERE, close_notifications  # this folder's helpers

from napari_dgc._qt.cube_layers import cube_source, show_clusters
from napari_dgc._qt.merge_widget import MergeWidget
from napari_dgc._sample_data import scene_layer_data
from napari_dgc.analysis.evaluation import suggest_mapping
from napari_dgc.analysis.masks import Mask
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.loop import train

CUBE = "synthetic leaf"


def snap(viewer, name: str) -> None:
    """Let Qt lay out and paint the window, then save it."""
    close_notifications()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(HERE / name), canvas_only=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="reuse this run folder instead of training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scene = make_leaf_scene(128, 128, 301, seed=0)
    warnings.filterwarnings("ignore")  # keeps deprecation toasts off the screenshots
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1250)
    for data, kwargs, kind in scene_layer_data(scene, CUBE):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.layers["ground truth"].visible = False

    source = cube_source(viewer.layers[CUBE])
    if args.run:
        run_dir = Path(args.run)
    else:
        run_dir = Path(tempfile.mkdtemp()) / "leaf-run"
        config = TrainConfig(
            model=ModelConfig(n_clusters=4), steps=60, checkpoint_every=20, seed=0
        ).with_settings({"data.batch_size": 2})
        for _ in train([source.cube], config, run_dir):
            pass
    run = RunDirectory.open(run_dir)
    run.choose("step-000060")
    labels = segment_cube(run.load_model(), source.cube).labels
    show_clusters(viewer, source, labels, run_dir=run_dir, checkpoint_id="step-000060", n_clusters=4)

    widget = MergeWidget(viewer)
    model = widget.model  # the script drives the panel's model; the views follow it
    viewer.window.add_dock_widget(widget, name="DGC: Cluster merge", area="right")
    QApplication.processEvents()
    viewer.reset_view()
    snap(viewer, "merge-1-clusters.png")

    # The clusters a person would pick after looking at the spectra; taken here from the
    # overlap with the ground truth so the script needs no clicking.
    suggestion, _, _ = suggest_mapping({CUBE: labels}, {CUBE: Mask(scene.labels)}, 4, method="many-to-one")
    model.add_class("lesion")
    for index, cls in enumerate(suggestion.classes):
        if cls.clusters:
            model.assign(cls.clusters, index)
    viewer.layers[f"DGC clusters [{CUBE}]"].visible = False
    tissue = np.argwhere(labels == suggestion.classes[1].clusters[0])[0]
    widget.describe_pixel(tuple(float(v) for v in tissue))
    model.select_clusters([])
    snap(viewer, "merge-2-classes.png")

    # Score background vs. tissue like the paper's DGC-2: lesion pixels of the mask count as
    # tissue, and the (empty) lesion class is removed.
    model.ground_truth.class_names = "background, tissue, tissue"
    model.remove_class(2)
    model.compute_iou()
    viewer.reset_view()
    viewer.layers["ground truth"].visible = True
    viewer.layers[f"DGC classes [{CUBE}]"].visible = False
    snap(viewer, "merge-3-iou.png")
    print(widget.status_label.text())
    print(model.report.format_table())
    viewer.close()
    if not args.run:
        shutil.rmtree(run_dir.parent)


if __name__ == "__main__":
    main()
