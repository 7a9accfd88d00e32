"""GUI benchmarks of the "DGC: Train" panel and the checkpoint timeline (run under Xvfb).

1. Responsiveness: while the panel trains, a 10 ms QTimer on the GUI thread records the gaps
   between its ticks; a gap is how long the GUI could not react. Reports p95 and max.
2. Timeline: time from moving the slider to the cluster map being on the Labels layer, for a
   checkpoint not yet segmented and for a cached one, on a 512 x 512 x 301 cube.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py [--seconds 60] [--skip-timeline]

Targets (from the issue): gap p95 < 50 ms and max < 250 ms; another checkpoint < 1 s,
a cached one < 100 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import napari  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_dgc._qt.timeline_widget import TimelineWidget  # noqa: E402
from napari_dgc._qt.train_state import TrainStatus  # noqa: E402
from napari_dgc._qt.train_widget import TrainWidget  # noqa: E402
from napari_dgc._sample_data import scene_layer_data  # noqa: E402
from napari_dgc.model import ModelConfig  # noqa: E402
from napari_dgc.synthetic import make_leaf_scene  # noqa: E402
from napari_dgc.training import TrainConfig, train  # noqa: E402


def add_scene(viewer: napari.Viewer, rows: int, cols: int, bands: int, name: str):
    scene = make_leaf_scene(rows, cols, bands, seed=0)
    return viewer.add_layer(napari.layers.Layer.create(*scene_layer_data(scene, name)[0]))


def process_until(condition, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not reached")
        QApplication.processEvents()
        time.sleep(0.002)


def bench_responsiveness(seconds: float, run_dir: Path, size: int, bands: int) -> dict:
    viewer = napari.Viewer(show=True)
    add_scene(viewer, size, size, bands, "leaf")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DGC: Train")
    widget.set_config(
        TrainConfig(model=ModelConfig(n_clusters=4), steps=1_000_000, checkpoint_every=20,
                    crop_size=32, batch_size=2, device="cpu")
    )
    widget.run_folder_edit.setText(str(run_dir))

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    clicked = time.perf_counter()
    assert widget.start_training()  # creates the cluster layer: a one-off, on the click
    start_ms = 1000 * (time.perf_counter() - clicked)
    timer.start()
    start = time.perf_counter()
    process_until(lambda: time.perf_counter() - start > seconds, seconds + 30)
    timer.stop()
    steps = widget.state.history.latest.step if widget.state.history.latest else 0
    checkpoints = len(widget.timeline.checkpoints)
    widget.stop_training()
    process_until(lambda: widget.state.status is TrainStatus.IDLE, 120)
    viewer.close()
    gaps = np.diff(ticks) * 1000.0
    return {
        "cube": f"{size}x{size}x{bands}",
        "seconds": seconds,
        "steps": steps,
        "start_click_ms": start_ms,
        "checkpoints_segmented": checkpoints,
        "gap_p50_ms": float(np.percentile(gaps, 50)),
        "gap_p95_ms": float(np.percentile(gaps, 95)),
        "gap_max_ms": float(gaps.max()),
    }


def bench_timeline(run_root: Path) -> dict:
    rows = cols = 512
    bands = 301
    scene = make_leaf_scene(rows, cols, bands, seed=0)
    run_dir = run_root / "timeline-run"
    config = TrainConfig(model=ModelConfig(n_clusters=4), steps=6, checkpoint_every=1,
                         crop_size=32, batch_size=1, device="cpu")
    for _ in train([scene.cube], config, run_dir):
        pass

    viewer = napari.Viewer(show=True)
    viewer.add_layer(napari.layers.Layer.create(*scene_layer_data(scene, "leaf")[0]))
    timeline = TimelineWidget(viewer)
    viewer.window.add_dock_widget(timeline, name="DGC: Checkpoints")
    shown: list[tuple[str, float]] = []
    timeline.checkpoint_shown.connect(lambda cid: shown.append((cid, time.perf_counter())))
    timeline.open_run(run_dir)  # shows the latest checkpoint (segmented in the background)
    process_until(lambda: shown, 300)
    sweep = timeline._review_worker
    timeline._stop_review_worker()  # measure moves alone, not competing with the sweep
    if sweep is not None:
        sweep.done.wait()

    def move_to(index: int) -> float:
        shown.clear()
        start = time.perf_counter()
        timeline.slider.setValue(index)
        process_until(lambda: shown, 300)
        return shown[0][1] - start

    ids = [info.checkpoint_id for info in timeline.checkpoints]
    not_cached = [i for i, cid in enumerate(ids) if timeline.review.cached_labels(cid) is None]
    uncached = [move_to(index) for index in not_cached[:3]]
    targets, current = [], timeline.slider.value()
    for index in [len(ids) - 1, *not_cached[:3]]:  # all segmented by now; never a no-op move
        if index != current:
            targets.append(index)
            current = index
    cached = [move_to(index) for index in targets]
    viewer.close()
    return {
        "cube": f"{rows}x{cols}x{bands}",
        "uncached_s": uncached,
        "cached_ms": [1000 * value for value in cached],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", type=int, default=128, help="side of the training cube")
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--skip-timeline", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (napari's own default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, napari {napari.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        print("responsiveness:", bench_responsiveness(args.seconds, Path(tmp) / "run", args.size, args.bands))
        if not args.skip_timeline:
            print("timeline:", bench_timeline(Path(tmp)))


if __name__ == "__main__":
    main()
