"""Batch segmentation of a study: cubes per minute with 1 and 2 worker processes, cold and warm.

Writes ``--cubes`` random float32 ``.npy`` cubes (rows x cols x bands, default 8 of
1000 x 1000 x 301, ~1.2 GB each) and a run folder trained for one step on a small cube of the
same band count (an untrained model costs what a trained one costs), then, per round and per
page-cache state:

* **read**: a fresh process sums every cube once through a memory map (the floor any
  segmentation of the study pays);
* **segment**: ``napari-dgc segment RUN CUBES --out DIR --workers W`` for each ``--workers``
  value, timed as the whole command (start-up, model loading, writing the maps and the
  manifest included).

*Cold* evicts every cube from the page cache first (``posix_fadvise(DONTNEED)``; dropping all
caches needs root); *warm* reads them all once first. Reports medians over the rounds of
seconds, cubes per minute and the ratio to the read in the same round and state, and checks
that every worker count wrote the same maps. Needs a quiet machine and ~10 GB of free disk::

    python benchmarks/bench_study.py --cubes 8 --size 1000x1000 --bands 301 --rounds 3

A quick check of the script::

    python benchmarks/bench_study.py --cubes 3 --size 64x48 --bands 20 --rounds 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segmentation import _evict, make_cube


def read_all(paths: list[Path]) -> float:
    """Seconds a fresh process takes to sum every cube once, 64 rows at a time."""
    code = (
        "import sys, time, numpy as np\n"
        "started = time.perf_counter()\n"
        "for path in sys.argv[1:]:\n"
        "    data = np.load(path, mmap_mode='r')\n"
        "    for top in range(0, data.shape[0], 64):\n"
        "        float(np.asarray(data[top : top + 64]).sum(dtype=np.float64))\n"
        "print(time.perf_counter() - started)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, check=True
    )
    return float(completed.stdout.strip())


def segment_all(run: Path, paths: list[Path], out: Path, workers: int) -> float:
    """Wall seconds of one ``napari-dgc segment`` command over every cube."""
    command = [sys.executable, "-m", "napari_dgc", "segment", str(run), *map(str, paths)]
    command += ["--out", str(out), "--workers", str(workers), "--format", "npy", "--quiet", "--overwrite"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"segment failed:\n{completed.stderr}")
    return seconds


def maps_digest(out: Path) -> str:
    """One hash over every map the command wrote (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(out.glob("*.npy")):
        digest.update(path.name.encode())
        digest.update(np.load(path, allow_pickle=False).tobytes())
    return digest.hexdigest()


def make_run(scratch: Path, bands: int) -> Path:
    """A run folder trained for one step on a small random cube with ``bands`` bands."""
    run = scratch / "run"
    if (run / "run.json").exists():
        return run
    small = scratch / "small.npy"
    make_cube(small, 96, 96, bands, seed=99)
    command = [sys.executable, "-m", "napari_dgc", "train", str(small), "--out", str(run), "--quiet"]
    command += ["--steps", "1", "--checkpoint-every", "1", "--set", "data.crop_size=32"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return run


def make_study(scratch: Path, count: int, rows: int, cols: int, bands: int) -> list[Path]:
    """The study's cubes, reused when they already exist with this shape."""
    paths = []
    for index in range(count):
        path = scratch / f"cube-{index:02d}.npy"
        if not path.exists() or np.load(path, mmap_mode="r").shape != (rows, cols, bands):
            make_cube(path, rows, cols, bands, seed=index)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=8)
    parser.add_argument("--size", default="1000x1000", help="ROWSxCOLS of every cube")
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "dgc-study")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)
    rows, cols = (int(side) for side in args.size.split("x"))
    args.scratch.mkdir(parents=True, exist_ok=True)
    paths = make_study(args.scratch, args.cubes, rows, cols, args.bands)
    run = make_run(args.scratch, args.bands)

    seconds: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    digests: dict[int, str] = {}
    for _ in range(args.rounds):
        for state in ("cold", "warm"):
            timings = {}
            for name in ["read", *(f"segment, {w} worker{'s' * (w > 1)}" for w in args.workers)]:
                if state == "cold":
                    for path in paths:
                        _evict(path)
                else:
                    read_all(paths)
                if name == "read":
                    timings[name] = read_all(paths)
                    continue
                workers = int(name.split(", ")[1].split()[0])
                out = args.scratch / f"maps-{workers}"
                timings[name] = segment_all(run, paths, out, workers)
                digests.setdefault(workers, maps_digest(out))
                if digests[workers] != maps_digest(out):
                    raise RuntimeError(f"{workers} workers wrote other maps in another round")
            for name, value in timings.items():
                seconds.setdefault((state, name), []).append(value)
                ratios.setdefault((state, name), []).append(value / timings["read"])
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"the worker counts wrote different maps: {digests}")

    print(
        f"{args.cubes} cubes of {rows} x {cols} x {args.bands} float32, "
        f"{args.rounds} round(s), medians [min-max]"
    )
    print("| page cache | command | seconds | cubes/min | ratio to read |")
    print("|---|---|---|---|---|")
    for (state, name), values in seconds.items():
        median = statistics.median(values)
        print(
            f"| {state} | {name} | {median:.1f} [{min(values):.1f}-{max(values):.1f}] "
            f"| {60 * args.cubes / median:.1f} | {statistics.median(ratios[state, name]):.2f} |"
        )
    print("maps identical for every worker count: yes")
    if args.json:
        rows_out = [{"state": s, "command": n, "seconds": v} for (s, n), v in seconds.items()]
        args.json.write_text(json.dumps(rows_out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
