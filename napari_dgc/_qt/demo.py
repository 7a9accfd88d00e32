"""The demo behind ``napari-dgc demo`` / ``make demo``.

Opens napari with the synthetic leaf scene (cube, pseudo-RGB, ground truth) and the
"DGC: Train" panel docked; optionally starts a short training and saves a screenshot of the
whole window, then exits (so it can run headless under Xvfb and be documented).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

SCENE_LAYER_NAME = "synthetic leaf"
# Upper bound for waiting on checkpoints before a screenshot: a slow machine still exits.
SCREENSHOT_TIMEOUT_S = 600.0


def run_demo(
    *,
    screenshot: str | None = None,
    train_steps: int = 0,
    checkpoints_before_screenshot: int = 2,
    scene_size: int = 192,
) -> int:
    """Open the demo viewer; block until it closes (or the screenshot is saved).

    Parameters
    ----------
    screenshot : str, optional
        Save a screenshot of the whole window to this PNG path, then close napari.
    train_steps : int
        Start a training run of this many steps right away (0: do not start).
    checkpoints_before_screenshot : int
        With ``train_steps`` and ``screenshot``: take the picture once this many checkpoints
        have been segmented and shown (or the run has ended).
    scene_size : int
        Rows and columns of the synthetic scene.

    Returns
    -------
    int
        Process exit code (0 on success).
    """
    import napari
    from qtpy.QtCore import QTimer

    from napari_dgc._qt.cube_layers import cube_source
    from napari_dgc._sample_data import synthetic_leaf_sample
    from napari_dgc.config import TrainConfig
    from napari_dgc.state.training import TrainStatus

    viewer = napari.Viewer(title="napari-dgc demo")
    for data, kwargs, layer_type in synthetic_leaf_sample(rows=scene_size, cols=scene_size):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    _dock, panel = viewer.window.add_plugin_dock_widget("napari-dgc", "DGC: Train")
    viewer.window.resize(1600, 1000)
    # Fit the scene to the canvas once the window has its final size.
    QTimer.singleShot(500, viewer.reset_view)

    if train_steps > 0:
        # Scripted through the panel's training session, not its fields (the form shows the
        # settings of the run the session trains).
        defaults = TrainConfig()
        config = defaults.with_settings(
            {
                "steps": train_steps,
                "checkpoint_every": max(1, train_steps // 8),
                "model.n_clusters": min(defaults.model.n_clusters, 3),
            }
        )
        run_dir = tempfile.mkdtemp(prefix="napari-dgc-demo-")
        panel.session.start(config, run_dir, [cube_source(viewer.layers[SCENE_LAYER_NAME])])

    if screenshot:
        started = time.monotonic()

        def ready() -> bool:
            if train_steps <= 0:
                return True
            shown = len(panel.review.figures)
            finished = panel.session.status is TrainStatus.IDLE
            timed_out = time.monotonic() - started > SCREENSHOT_TIMEOUT_S
            return shown >= checkpoints_before_screenshot or finished or timed_out

        def poll() -> None:
            if not ready():
                return
            timer.stop()
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(screenshot, canvas_only=False)
            print(f"screenshot saved: {screenshot}")
            panel.shutdown()
            viewer.close()

        timer = QTimer()
        timer.setInterval(500)
        timer.timeout.connect(poll)
        # Let the window lay itself out and draw once before the first picture.
        QTimer.singleShot(1500, timer.start)

    napari.run()
    return 0
