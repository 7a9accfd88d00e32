"""Benchmark tiled segmentation of large memory-mapped cubes: seconds, peak RSS, I/O floor.

For each size it writes a random float32 ``.npy`` cube (rows x cols x bands) to a scratch
folder, then runs two fresh child processes, each after evicting the file from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (dropping all caches needs root):

* **I/O floor**: sum the cube once through a memory map, in blocks of rows;
* **segmentation**: ``segment_cube`` with a randomly initialised ``DGCModel`` at the default
  architecture (an untrained model costs exactly what a trained one costs).

Each child reports its wall time and its own peak RSS (``VmHWM``, which includes the
interpreter, numpy and torch, and the file pages it has mapped). Prints a markdown table. Example::

    python benchmarks/bench_segmentation.py --sizes 1000x1000 2000x1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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


def child_read(path: Path) -> dict:
    """Sum the cube through a fresh memory map, 64 rows at a time."""
    _evict(path)
    started, cpu_started = time.perf_counter(), time.process_time()
    data = np.load(path, mmap_mode="r")
    total = 0.0
    for top in range(0, data.shape[0], 64):
        total += float(np.asarray(data[top : top + 64]).sum(dtype=np.float64))
    del data
    return {"seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, "peak_rss_mib": _peak_rss_mib()}


def child_segment(path: Path, tile: int, threads: int) -> dict:
    """Segment the cube with a random default-architecture model."""
    import torch

    from napari_dgc.io import open_cube
    from napari_dgc.model import DGCModel, ModelConfig
    from napari_dgc.segmentation import segment_cube

    torch.set_num_threads(threads)
    cube = open_cube(path)
    torch.manual_seed(0)
    model = DGCModel(cube.n_bands, ModelConfig()).eval()
    _evict(path)
    rss_before = _rss_mib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = segment_cube(model, cube, tile=tile)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_mib": rss_before,
        "clusters_used": int(len(np.unique(result.labels))),
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


def _run_child(*arguments: str) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", *arguments], capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child {arguments} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1000x1000", "2000x1000"],
                        help="ROWSxCOLS of each cube")
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--tile", type=int, nargs="+", default=[256], help="tile sides to try")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the cubes")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, path, *rest = args.child
        result = (child_read(Path(path)) if kind == "read"
                  else child_segment(Path(path), int(rest[0]), int(rest[1])))
        print(json.dumps(result))
        return

    print("| cube | tile | I/O floor s (CPU s) | segment s (CPU s) | ratio | "
          "peak RSS MiB: read / segment (before segmenting) |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rows, cols = (int(n) for n in size.lower().split("x"))
        path = Path(args.scratch) / f"napari-dgc-bench-{rows}x{cols}x{args.bands}.npy"
        try:
            make_cube(path, rows, cols, args.bands)
            for tile in args.tile:
                floor = _run_child("read", str(path))
                segment = _run_child("segment", str(path), str(tile), str(args.threads))
                print(
                    f"| {rows}x{cols}x{args.bands} | {tile} | {floor['seconds']:.2f} "
                    f"({floor['cpu_seconds']:.2f}) | {segment['seconds']:.1f} "
                    f"({segment['cpu_seconds']:.1f}) | "
                    f"{segment['seconds'] / floor['seconds']:.1f} | "
                    f"{floor['peak_rss_mib']:.0f} / {segment['peak_rss_mib']:.0f} "
                    f"(before: {segment['rss_before_mib']:.0f}) |",
                    flush=True,
                )
        finally:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
