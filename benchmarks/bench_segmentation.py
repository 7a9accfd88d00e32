"""Benchmark tiled segmentation of large memory-mapped cubes: seconds, peak RSS, I/O floor.

For each size it writes a random float32 ``.npy`` cube (rows x cols x bands) to a scratch
folder, then runs two fresh child processes, each after evicting the file from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (dropping all caches needs root):

* **I/O floor**: sum the cube once through a memory map, in blocks of rows;
* **segmentation**: ``segment_cube`` with a randomly initialised ``DGCModel`` at the default
  architecture (an untrained model costs exactly what a trained one costs), once per value of
  ``--workers`` (tiles segmented in parallel), side by side.

Each child reports its wall and CPU time, its own peak RSS (``VmHWM``, which includes the
interpreter, numpy and torch, and the file pages it has mapped, which the kernel may keep or
drop as it likes), the peak of its anonymous memory (``RssAnon`` sampled every 5 ms: what the
process itself allocates, without the cube's file pages) and a hash of the labels (all worker
counts must give the same labels). Prints a markdown table. Example::

    python benchmarks/bench_segmentation.py --sizes 1000x1000 2000x1000 --threads 1 --workers 1 2

``--timeline`` instead times the checkpoint timeline's engine part,
:class:`~napari_dgc.inference.checkpoint_review.CheckpointReview`, on an in-memory synthetic
512 x 512 x 301 leaf scene and a run folder of random checkpoints sharing one normalisation:
the first (not yet segmented) checkpoint, the next one (spectral input cached or not) and a
cached one, serial and with parallel tiles::

    python benchmarks/bench_segmentation.py --timeline --threads 1 --workers 1 2

``--compare TREE --rounds N`` alternates the I/O floor, this tree and another source tree (a
``git worktree`` of an older commit) N times and prints medians and the per-round ratio::

    python benchmarks/bench_segmentation.py --sizes 1000x1000 --threads 1 --workers 2 \
        --compare /tmp/old-tree --rounds 5

Each segmentation child first segments a small 48 x 48 array with the same model: the first
call of a process loads (or, once per installation, compiles) its kernels, and that one-off
cost is reported on its own ("first call s"), not in the cube's time.

``--stages`` times each stage of the model on one tile (where the CPU time of segmentation
goes)::

    python benchmarks/bench_segmentation.py --stages --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _rss_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB.

    Not ``ru_maxrss``: Linux carries that over from the parent across fork + exec, so a child
    of a big parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_mib() -> float:
    return _rss_mib("VmHWM")


class _AnonymousPeak:
    """Peak ``RssAnon`` (MiB) of this process while the ``with`` block runs, sampled by a
    thread every 5 ms (the kernel keeps no high-water mark for it)."""

    def __enter__(self) -> _AnonymousPeak:
        self.peak_mib = _rss_mib("RssAnon")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak_mib = max(self.peak_mib, _rss_mib("RssAnon"))

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, _rss_mib("RssAnon"))


def child_read(path: Path) -> dict:
    """Sum the cube through a fresh memory map, 64 rows at a time."""
    _evict(path)
    started, cpu_started = time.perf_counter(), time.process_time()
    data = np.load(path, mmap_mode="r")
    total = 0.0
    for top in range(0, data.shape[0], 64):
        total += float(np.asarray(data[top : top + 64]).sum(dtype=np.float64))
    del data
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "peak_rss_mib": _peak_rss_mib(),
    }


def child_segment(path: Path, tile: int, threads: int, workers: int) -> dict:
    """Segment the cube with a random default-architecture model."""
    import torch

    from napari_dgc.config import ModelConfig
    from napari_dgc.inference.segmentation import segment_cube
    from napari_dgc.io import open_cube
    from napari_dgc.model.network import DGCModel

    torch.set_num_threads(threads)
    cube = open_cube(path)
    torch.manual_seed(0)
    model = DGCModel(cube.n_bands, ModelConfig()).eval()
    # The first call of a process loads (or compiles) its kernels: timed on its own.
    small = np.random.default_rng(1).random((48, 48, cube.n_bands), dtype=np.float32)
    _, first_call_seconds, _ = _timed(lambda: segment_cube(model, small, tile=tile, workers=workers))
    _evict(path)
    rss_before = _rss_mib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    with _AnonymousPeak() as anonymous:
        result = segment_cube(model, cube, tile=tile, workers=workers)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "first_call_seconds": first_call_seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_mib": rss_before,
        "peak_anonymous_mib": anonymous.peak_mib,
        "clusters_used": int(len(np.unique(result.labels))),
        "labels_sha256": hashlib.sha256(result.labels.tobytes()).hexdigest(),
    }


def make_cube(path: Path, rows: int, cols: int, bands: int, seed: int = 0) -> None:
    """Write a random float32 cube without holding it in memory."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols, bands))
    for top in range(0, rows, 50):
        block = out[top : top + 50]
        block[...] = rng.random(block.shape, dtype=np.float32)
    out.flush()
    del out


def _run_child(*arguments: str, tree: str | None = None) -> dict:
    """Run this script as a child; ``tree``: import napari_dgc from that source tree."""
    environment = dict(os.environ)
    if tree is not None:
        environment["PYTHONPATH"] = os.pathsep.join([tree, environment.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, __file__, "--child", *arguments],
        capture_output=True,
        text=True,
        env=environment,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child {arguments} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _timed(function) -> tuple[object, float, float]:
    """``(result, wall s, process CPU s)`` of ``function()``."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - started, time.process_time() - cpu_started


def bench_timeline(scratch: Path, threads: int, worker_counts: list[int], repeats: int) -> None:
    """Time CheckpointReview on a 512 x 512 x 301 scene; print a markdown table."""
    import torch

    from napari_dgc.config import ModelConfig, TrainConfig
    from napari_dgc.datasets.synthetic import make_leaf_scene
    from napari_dgc.inference.checkpoint_review import CheckpointReview
    from napari_dgc.model.network import DGCModel
    from napari_dgc.run_folder import RunDirectory

    torch.set_num_threads(threads)
    cube = make_leaf_scene(512, 512, 301, seed=0).cube
    pixels = cube.reshape(-1, cube.shape[-1])
    brightness = pixels.mean(axis=1, keepdims=True)
    offset, scale = (pixels / brightness).mean(axis=0), (pixels / brightness).std(axis=0)
    config = TrainConfig(model=ModelConfig(n_clusters=4))
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        run = RunDirectory.create(Path(folder) / "run", config, cube.shape[-1], None, [], seed=0)
        for step in range(1, 4):  # every checkpoint of a run has the same normalisation
            torch.manual_seed(step)
            model = DGCModel(cube.shape[-1], config.model)
            model.set_normalization(offset, scale)
            optimizer = torch.optim.AdamW(model.parameters())
            run.save_checkpoint(step, model.state_dict(), optimizer.state_dict(), {}, {})
        ids = [info.checkpoint_id for info in run.checkpoints()]
        variants = [(workers, spectral) for workers in worker_counts for spectral in (False, True)]
        rows: dict[tuple[int, bool], list[tuple[float, ...]]] = {v: [] for v in variants}
        reference = None
        for _ in range(repeats):  # variants interleaved, so load changes hit them alike
            for workers, spectral in variants:
                review = CheckpointReview(
                    run.path, {"leaf": cube}, spectral_cache_bytes=256 * 2**20 if spectral else 0
                )
                first, wall_1, cpu_1 = _timed(partial(review.labels, ids[0], workers=workers))
                second, wall_2, cpu_2 = _timed(partial(review.labels, ids[1], workers=workers))
                _, wall_c, _ = _timed(partial(review.labels, ids[0], workers=workers))
                labels = (first["leaf"], second["leaf"])
                if reference is None:
                    reference = labels
                if not all(np.array_equal(a, b) for a, b in zip(labels, reference)):
                    raise AssertionError(
                        f"workers={workers}, spectral cache={spectral}: "
                        "labels differ from the first variant's"
                    )
                rows[(workers, spectral)].append((wall_1, cpu_1, wall_2, cpu_2, wall_c))
    print(f"torch threads {threads}; median of {repeats} (labels identical in every variant)")
    print("| workers | spectral cache | 1st checkpoint s (CPU s) | next checkpoint s (CPU s) | cached ms |")
    print("|---|---|---|---|---|")
    for (workers, spectral), values in rows.items():
        m = [statistics.median(column) for column in zip(*values)]
        print(
            f"| {workers} | {'on' if spectral else 'off'} | {m[0]:.2f} ({m[1]:.2f}) | "
            f"{m[2]:.2f} ({m[3]:.2f}) | {1000 * m[4]:.2f} |",
            flush=True,
        )


def bench_stages(bands: int, tile: int, threads: int, repeats: int) -> None:
    """Time each stage of the model on one in-memory tile (with its halo), best of ``repeats``."""
    import torch
    import torch.nn.functional as F

    from napari_dgc.config import ModelConfig
    from napari_dgc.model.meanshift import mean_shift
    from napari_dgc.model.network import DGCModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DGCModel(bands, ModelConfig()).eval()
    side = tile + 2 * model.receptive_radius
    window = torch.from_numpy(np.random.default_rng(0).random((side, side, bands), dtype=np.float32))

    def best_of(stage):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = stage()
            times.append(time.perf_counter() - started)
        return min(times), result

    def spatial_convs(features):
        for index, conv in enumerate(model.spatial_convs):
            features = conv(features)
            if index < len(model.spatial_convs) - 1:
                features = F.relu(features)
        return F.normalize(features, dim=1)

    radius = model.config.meanshift_window // 2
    with torch.inference_mode():
        stages = {}
        stages["normalise + resample (one GEMM)"], sequences = best_of(
            lambda: model.spectral_input(window.reshape(-1, bands))
        )
        stages["1D band convolutions"], features = best_of(lambda: model.band_features(sequences))
        image = features.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        stages["2D convolutions + L2 norm"], z = best_of(lambda: spatial_convs(image))
        stages["mean-shift"], z = best_of(
            lambda: mean_shift(z, model.bandwidth, model.config.meanshift_iters, radius, None)
        )
        stages["soft assignment"], _ = best_of(lambda: model.assign(z))
    print(
        f"one {side} x {side} x {bands} tile (interior {tile}, halo {model.receptive_radius}), "
        f"torch threads {threads}, best of {repeats}"
    )
    print("| stage | ms per tile | us per computed pixel | us per output pixel |")
    print("|---|---|---|---|")
    for name, seconds in [*stages.items(), ("total", sum(stages.values()))]:
        print(
            f"| {name} | {seconds * 1e3:.1f} | {seconds / side**2 * 1e6:.2f} | "
            f"{seconds / tile**2 * 1e6:.2f} |"
        )


def _bench_cubes(args: argparse.Namespace) -> Iterator[tuple[int, int, Path]]:
    """Write each ``--sizes`` cube to the scratch folder, yield ``(rows, cols, path)``, delete it."""
    for size in args.sizes:
        rows, cols = (int(n) for n in size.lower().split("x"))
        path = Path(args.scratch) / f"napari-dgc-bench-{rows}x{cols}x{args.bands}.npy"
        try:
            make_cube(path, rows, cols, args.bands)
            yield rows, cols, path
        finally:
            path.unlink(missing_ok=True)


def bench_compare(args: argparse.Namespace) -> None:
    """Alternate I/O floor, this tree and ``args.compare`` for ``args.rounds`` rounds; medians."""
    trees = {"this tree": str(Path(__file__).resolve().parents[1]), "compared": args.compare}
    print(
        f"torch threads {args.threads}, {args.rounds} rounds (floor, this tree, compared "
        f"tree {args.compare}, in turn); medians, min-max in brackets"
    )
    print(
        "| cube | tile | workers | tree | I/O floor s | segment s (CPU s) | ratio to floor | "
        "first call s | peak anonymous MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, cols, path in _bench_cubes(args):
        for tile in args.tile:
            for workers in args.workers:
                floors, runs = [], {name: [] for name in trees}
                for _ in range(args.rounds):
                    floors.append(_run_child("read", str(path))["seconds"])
                    for name, tree in trees.items():
                        runs[name].append(
                            _run_child(
                                "segment", str(path), str(tile), str(args.threads), str(workers), tree=tree
                            )
                        )
                floor = statistics.median(floors)
                for name, results in runs.items():
                    seconds = [r["seconds"] for r in results]
                    print(
                        f"| {rows}x{cols}x{args.bands} | {tile} | {workers} | {name} | "
                        f"{floor:.2f} [{min(floors):.2f}-{max(floors):.2f}] | "
                        f"{statistics.median(seconds):.2f} [{min(seconds):.2f}-{max(seconds):.2f}] "
                        f"({statistics.median(r['cpu_seconds'] for r in results):.2f}) | "
                        f"{statistics.median(seconds) / floor:.1f} | "
                        f"{statistics.median(r['first_call_seconds'] for r in results):.2f} | "
                        f"{statistics.median(r['peak_anonymous_mib'] for r in results):.0f} |",
                        flush=True,
                    )
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(*runs.values())]
                print(
                    f"|  |  |  | this / compared, per round | | "
                    f"median {statistics.median(ratios):.2f} "
                    f"[{min(ratios):.2f}-{max(ratios):.2f}] | | | |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["1000x1000", "2000x1000"], help="ROWSxCOLS of each cube"
    )
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--tile", type=int, nargs="+", default=[256], help="tile sides to try")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="tiles segmented in parallel; each value is measured",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="time CheckpointReview on 512x512x301 instead (see above)"
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="time each model stage on one tile of the first --tile size instead",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timeline / stage rounds")
    parser.add_argument(
        "--compare",
        metavar="TREE",
        help="also segment with napari_dgc imported from this source tree (e.g. "
        "a git worktree of an older commit), in turn with this one",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the cubes")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, path, *rest = args.child
        result = child_read(Path(path)) if kind == "read" else child_segment(Path(path), *map(int, rest))
        print(json.dumps(result))
        return
    if args.stages:
        bench_stages(args.bands, args.tile[0], args.threads, args.repeats)
        return
    if args.timeline:
        bench_timeline(Path(args.scratch), args.threads, args.workers, args.repeats)
        return
    if args.compare:
        bench_compare(args)
        return

    print(f"torch threads {args.threads}")
    print(
        "| cube | tile | workers | I/O floor s (CPU s) | segment s (CPU s) | ratio | "
        "peak RSS MiB: read / segment (before segmenting) | peak anonymous MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rows, cols, path in _bench_cubes(args):
        for tile in args.tile:
            hashes = set()
            for workers in args.workers:  # side by side, each next to a fresh I/O floor
                floor = _run_child("read", str(path))
                segment = _run_child("segment", str(path), str(tile), str(args.threads), str(workers))
                hashes.add(segment["labels_sha256"])
                print(
                    f"| {rows}x{cols}x{args.bands} | {tile} | {workers} | "
                    f"{floor['seconds']:.2f} ({floor['cpu_seconds']:.2f}) | "
                    f"{segment['seconds']:.2f} ({segment['cpu_seconds']:.2f}) | "
                    f"{segment['seconds'] / floor['seconds']:.1f} | "
                    f"{floor['peak_rss_mib']:.0f} / {segment['peak_rss_mib']:.0f} "
                    f"(before: {segment['rss_before_mib']:.0f}) | "
                    f"{segment['peak_anonymous_mib']:.0f} |",
                    flush=True,
                )
            if len(hashes) > 1:
                raise AssertionError(f"{rows}x{cols}, tile {tile}: labels differ between workers")


if __name__ == "__main__":
    main()
