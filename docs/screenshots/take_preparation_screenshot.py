"""Screenshot of a calibrated, binned run in a 1280 x 800 napari window (user guide, "Calibration
and preparation").

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots/take_preparation_screenshot.py

Makes a raw cube in counts (a synthetic leaf scene under an illumination that falls off towards
the left, plus a dark level), white and dark reference cubes, and trains a small run with the
white/dark correction, a 450-950 nm band crop and 2 x 2 binning (in a temporary folder); then
opens the raw cube in napari with the "DGC: Train" panel showing the run's settings, scrolled to
the preparation fields, and the run's clusters over the raw cube (each label covering its 2 x 2
block), and writes ``preparation-1280x800.png`` here.
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
from screenshot_helpers import HERE, SIZE, close_notifications, settle, wait  # this folder's helpers

from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.loop import train


def make_folder(folder: Path) -> Path:
    """The raw cube (with wavelengths), its references and a small calibrated run."""
    scene = make_leaf_scene(128, 128, 48, seed=2)
    illumination = 4000.0 * np.linspace(0.4, 1.0, 128)[None, :, None] * np.linspace(0.6, 1.0, 48)
    dark = 200.0
    np.save(folder / "leaf.npy", (dark + illumination * scene.cube).astype(np.float32))
    (folder / "leaf.json").write_text(json.dumps({"wavelengths": scene.wavelengths.tolist()}))
    np.save(folder / "white.npy", (dark + illumination * np.ones((8, 128, 48))).astype(np.float32))
    np.save(folder / "dark.npy", np.full((8, 128, 48), dark, np.float32))
    config = TrainConfig(model=ModelConfig(n_clusters=4)).with_settings(
        {
            "starts.count": 1,
            "steps": 60,
            "checkpoint_every": 20,
            "data.crop_size": 32,
            "device": "cpu",
            "seed": 1,
            "prep.white": str(folder / "white.npy"),
            "prep.dark": str(folder / "dark.npy"),
            "prep.bands": "450:950",
            "prep.binning": 2,
        }
    )
    run = folder / "runs" / "calibrated"
    for _ in train([folder / "leaf.npy"], config, run):
        pass
    return run


def screenshot(folder: Path, run: Path) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(*SIZE)
    viewer.open(folder / "leaf.npy", plugin="napari-dgc")
    _, panel = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Train")
    panel.set_config(RunDirectory.open(run).config)
    panel.advanced_section.set_expanded(True)
    shown: list[str] = []
    panel.timeline.checkpoint_shown.connect(shown.append)
    panel.timeline.open_run(run)
    wait(lambda: shown)
    settle()
    panel._scroll.ensureWidgetVisible(panel.form.fields["prep.binning"].native)
    viewer.reset_view()
    close_notifications()
    settle()
    viewer.screenshot(str(HERE / "preparation-1280x800.png"), canvas_only=False)
    window = viewer.window.geometry()
    print(f"window {window[2]} x {window[3]}", file=sys.stderr)
    viewer.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        screenshot(folder, make_folder(folder))


if __name__ == "__main__":
    main()
