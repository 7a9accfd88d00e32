"""Benchmark cube opening and pseudo-RGB on a large on-disk cube (default 1000 x 1000 x 301 float32).

For each layout (``.npy`` band-last, ENVI BSQ, BIL, BIP) the script writes the cube into a
temporary folder block by block, then measures in a fresh child process (so peak RSS belongs
to the measured work alone):

* ``open_cube``: median wall time of several opens (headers only, no values read);
* ``pseudo_rgb``: wall time (first call, file in the page cache after writing) and peak
  Python/numpy allocation (tracemalloc);
* peak resident memory of the child process (``VmHWM`` from ``/proc/self/status``, which
  unlike ``ru_maxrss`` does not inherit the parent's peak across fork/exec), including mapped
  file pages, after the imports, after opening and after the pseudo-RGB.

The files are deleted afterwards. Usage::

    python benchmarks/bench_io.py [--rows 1000 --cols 1000 --bands 301] [--repeats 7]
        [--layouts npy bsq bil bip] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUT_AXES = {
    "bsq": (2, 0, 1),
    "bil": (0, 2, 1),
    "bip": (0, 1, 2),
}  # file axes of a (rows, cols, bands) cube


def write_cube(folder: Path, layout: str, rows: int, cols: int, bands: int) -> Path:
    """Write a random float32 cube in ``layout`` without holding it in memory; return its path."""
    rng = np.random.default_rng(0)
    if layout == "npy":
        path = folder / "cube.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols, bands))
        for start in range(0, rows, 50):
            out[start : start + 50] = rng.random((min(50, rows - start), cols, bands), dtype=np.float32)
        out.flush()
        del out
        return path
    data_path = folder / "cube.raw"
    stored_shape = tuple((rows, cols, bands)[a] for a in LAYOUT_AXES[layout])
    out = np.memmap(data_path, mode="w+", dtype="<f4", shape=stored_shape)
    for start in range(0, stored_shape[0], 10):
        stop = min(stored_shape[0], start + 10)
        out[start:stop] = rng.random((stop - start,) + stored_shape[1:], dtype=np.float32)
    out.flush()
    del out
    wavelengths = ", ".join(f"{w:.2f}" for w in np.linspace(400, 1000, bands))
    (folder / "cube.hdr").write_text(
        f"ENVI\nsamples = {cols}\nlines = {rows}\nbands = {bands}\nheader offset = 0\n"
        f"data type = 4\ninterleave = {layout}\nbyte order = 0\n"
        f"wavelength units = Nanometers\nwavelength = {{{wavelengths}}}\n"
    )
    return folder / "cube.hdr"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux; else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            line = next(entry for entry in status if entry.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, repeats: int) -> dict:
    """Run in the child process: time open_cube and pseudo_rgb, report memory."""
    import tracemalloc

    from napari_dgc.io import open_cube
    from napari_dgc.io.pseudo_rgb import pseudo_rgb

    rss_before = peak_rss_mib()
    open_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cube = open_cube(path)
        open_times.append(time.perf_counter() - start)
    rss_after_open = peak_rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    rgb = pseudo_rgb(cube)
    rgb_time = time.perf_counter() - start
    _, rgb_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = peak_rss_mib()
    return {
        "cube_bytes": cube.nbytes,
        "open_median_s": float(np.median(open_times)),
        "open_max_s": float(np.max(open_times)),
        "rgb_s": rgb_time,
        "rgb_traced_peak_bytes": rgb_peak,
        "rss_before_mib": rss_before,
        "rss_after_open_mib": rss_after_open,
        "rss_peak_mib": rss_peak,
        "rgb_shape": list(rgb.shape),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--cols", type=int, default=1000)
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--layouts", nargs="+", default=["npy", "bsq", "bil", "bip"], choices=["npy", *LAYOUT_AXES]
    )
    parser.add_argument("--dir", default=None, help="folder for the temporary files (default: system temp)")
    parser.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats)))
        return 0

    print(
        f"cube {args.rows} x {args.cols} x {args.bands} float32, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}"
    )
    print(
        "| layout | size | open_cube median (max) | pseudo-RGB | traced peak (pseudo-RGB) "
        "| peak RSS: imports / after open / after pseudo-RGB |"
    )
    print("|---|---|---|---|---|---|")
    for layout in args.layouts:
        folder = Path(tempfile.mkdtemp(prefix="bench_io_", dir=args.dir))
        try:
            path = write_cube(folder, layout, args.rows, args.cols, args.bands)
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(child.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(
            f"| {layout} | {r['cube_bytes'] / 1e9:.2f} GB | {r['open_median_s'] * 1e3:.2f} ms "
            f"({r['open_max_s'] * 1e3:.2f} ms) | {r['rgb_s']:.2f} s | "
            f"{r['rgb_traced_peak_bytes'] / 2**20:.0f} MiB "
            f"| {r['rss_before_mib']:.0f} / {r['rss_after_open_mib']:.0f} / {r['rss_peak_mib']:.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
