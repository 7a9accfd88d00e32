"""Screenshot of a reopened project in a 1280 x 800 napari window (user guide, "Projects").

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_project_screenshot.py

Trains a small run on a synthetic leaf cube saved as ``leaf.npy`` (with its wavelengths), merges
its clusters, imports the ground truth as a mask, scores it and saves a project (in a temporary
folder); then opens the project in a fresh viewer, points at a cube pixel at band 20 and writes
``project-reopened-1280x800.png`` here: the restored layers, the timeline at the saved
checkpoint with the project line, and the status bar with the band's wavelength.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari
import numpy as np
from PIL import Image
from screenshot_helpers import HERE, SIZE, settle, wait  # this folder's helpers

from napari_dgc._qt import project_view
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.training.loop import train

BAND = 20


def make_folder(folder: Path) -> None:
    """A cube file, its ground-truth mask and a small finished run."""
    scene = make_leaf_scene(96, 96, 32, seed=2)
    np.save(folder / "leaf.npy", scene.cube)
    (folder / "leaf.json").write_text(json.dumps({"wavelengths": scene.wavelengths.tolist()}))
    Image.fromarray(scene.labels.astype(np.uint8)).save(folder / "leaf_mask.png")
    config = TrainConfig(model=ModelConfig(n_clusters=4)).with_settings(
        {
            "starts.count": 1,
            "steps": 60,
            "checkpoint_every": 20,
            "data.crop_size": 32,
            "device": "cpu",
            "seed": 1,
        }
    )
    for _ in train([scene.cube], config, folder / "runs" / "leaf"):
        pass


def panels(viewer: napari.Viewer):
    """The docks and widgets of the Checkpoints and Cluster merge panels, tabbed."""
    checkpoints = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Checkpoints")
    merge = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Cluster merge", tabify=True)
    return checkpoints, merge


def save_project(folder: Path) -> Path:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    viewer.open(folder / "leaf.npy", plugin="napari-dgc")
    (_, timeline), (_, merge) = panels(viewer)
    shown: list[str] = []
    timeline.checkpoint_shown.connect(shown.append)
    timeline.open_run(folder / "runs" / "leaf")
    wait(lambda: shown)
    merge.refresh_layers()
    merge.import_masks([folder / "leaf_mask.png"])
    merge.model.apply_suggestion()
    merge.model.compute_iou()
    path = timeline.project_view.save(folder / "leaf.dgcproj.json")
    viewer.close()
    return path


def reopen(path: Path) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    (dock, timeline), _ = panels(viewer)
    # The panel's own line says what was opened; the notification would cover the canvas.
    project_view.show_info = lambda _text: None
    restored: list[str] = []
    timeline.project_view.restored.connect(restored.append)
    timeline.project_view.open(path)
    wait(lambda: restored)
    cube = viewer.layers["leaf"]
    cube.visible = True  # under the pseudo-RGB; visible, so the status bar gives its value
    viewer.layers.selection.active = cube
    viewer.dims.set_current_step(0, BAND)
    settle()
    viewer.mouse_over_canvas = True
    viewer.cursor.position = (BAND, 40, 52)
    viewer.update_status_from_cursor()
    dock.raise_()  # the Checkpoints tab, with the project line, in front
    settle()
    viewer.screenshot(str(HERE / "project-reopened-1280x800.png"), canvas_only=False)
    window = viewer.window.geometry()
    print(f"window {window[2]} x {window[3]}; status: {viewer.status}", file=sys.stderr)
    viewer.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "leaf-project"
        folder.mkdir()
        make_folder(folder)
        reopen(save_project(folder))


if __name__ == "__main__":
    main()
