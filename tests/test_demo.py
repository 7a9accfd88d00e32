"""The README's demo: napari opens with the sample scene and the panel, and saves a screenshot."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from skimage.io import imread


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (pytest-xvfb provides one)")
def test_demo_saves_a_screenshot_of_the_window_with_training(tmp_path):
    screenshot = tmp_path / "demo.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_dgc.cli",
            "demo",
            "--screenshot",
            str(screenshot),
            "--size",
            "64",
            "--train-steps",
            "4",
            "--checkpoints-before-screenshot",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # The demo's run folder (tempfile.mkdtemp) goes under tmp_path, not the system's /tmp.
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"screenshot saved: {screenshot}" in result.stdout
    picture = imread(screenshot)
    # The whole window (canvas and docked panel), not just the canvas, and not a blank frame.
    assert picture.shape[0] >= 600 and picture.shape[1] >= 1000
    assert np.unique(picture.reshape(-1, picture.shape[-1]), axis=0).shape[0] > 100
    assert len(list(tmp_path.glob("napari-dgc-demo-*/run.json"))) == 1
