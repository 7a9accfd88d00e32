"""Data-parallel training: throughput with 1 and 2 processes, and the quality at the same pairs.

Each setting trains the same run with ``torchrun --nproc-per-node N -m napari_dgc train`` on
synthetic leaf scenes (:func:`quality.make_leaf`), the same global batch and steps, so every N
trains on the same crop pairs; the cores are shared out (``--threads`` in all, divided between
the processes). Reported per N and seed:

* **pairs/s**: crop pairs trained per second of training (steps x batch / the run's recorded
  training time, rank 0's clock; start-up, the checkpoints' scoring and writing excluded) and
  the wall time of the whole command; the steps up to the first checkpoint are left out of
  the rate (they compile kernels and fill caches), so ``--steps`` needs two checkpoints;
* **quality** of the final and the best checkpoint on other scenes (K=3: NMI and the
  background–tissue mean IoU, :func:`quality.score`).

Timing needs a quiet machine; the lead runs it there. A smoke test of the script::

    python benchmarks/bench_distributed.py --steps 4 --checkpoint-every 2 --size 48 --bands 20 --crop-size 16

A measurement (a few minutes on 2 cores)::

    python benchmarks/bench_distributed.py --steps 300 --checkpoint-every 50 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import make_leaf, score

K = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_run(args: argparse.Namespace, processes: int, seed: int, files: list[Path], run_dir: Path) -> dict:
    """Train one run with ``processes`` processes; return its timings."""
    threads = max(1, args.threads // processes)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", str(processes), "--master-port", str(_free_port())]
    command += ["-m", "napari_dgc", "train", *map(str, files), "--out", str(run_dir), "--quiet"]
    command += [
        "--clusters",
        str(K),
        "--steps",
        str(args.steps),
        "--checkpoint-every",
        str(args.checkpoint_every),
    ]
    command += ["--batch-size", str(args.batch_size), "--crop-size", str(args.crop_size)]
    command += ["--starts", "1", "--seed", str(seed), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    # From the first checkpoint to the last: the first steps compile kernels and fill caches.
    states = [
        json.loads((folder / "state.json").read_text())["training"]
        for folder in sorted((run_dir / "checkpoints").iterdir())
    ]
    if len(states) < 2:
        raise SystemExit("the rate needs two checkpoints: give --steps >= 2 x --checkpoint-every")
    first, last = states[0], states[-1]
    pairs = (last["step"] - first["step"]) * args.batch_size
    seconds = last["elapsed_s"] - first["elapsed_s"]
    return {"wall_s": wall, "train_s": last["elapsed_s"], "pairs_per_s": pairs / seconds}


def run_quality(dataset, run_dir: Path) -> dict:
    """Scores of the final and the best (by the B–T mean IoU) checkpoint on the test scenes."""
    from napari_dgc.inference.segmentation import segment_cube
    from napari_dgc.run_folder import RunDirectory

    run = RunDirectory.open(run_dir)
    scored = []
    for info in run.checkpoints(start=0):
        model = run.load_model(info.checkpoint_id)
        scored.append(score(dataset, K, [segment_cube(model, cube).labels for cube in dataset.test_cubes]))
    return {"final": scored[-1], "best": max(scored, key=lambda s: s["bt_miou"])}


def main(argv: list[str] | None = None) -> int:
    """Run every (processes, seed) and print a markdown table; ``--json`` keeps the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4, help="global batch (crop pairs per step)")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, shared by the processes")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic scenes")
    parser.add_argument("--bands", type=int, default=120)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        dataset = make_leaf(Path(scratch), args.size, args.bands, n_train=2, n_test=2)
        # The first training of a machine compiles and caches the CPU kernels: not measured.
        warm_up = argparse.Namespace(**{**vars(args), "steps": 2, "checkpoint_every": 1})
        train_run(warm_up, 1, 0, dataset.train_files, Path(scratch) / "warm-up")
        for seed in args.seeds:
            for processes in args.processes:
                run_dir = Path(scratch) / f"run-n{processes}-s{seed}"
                row = {
                    "processes": processes,
                    "seed": seed,
                    **train_run(args, processes, seed, dataset.train_files, run_dir),
                }
                row.update(run_quality(dataset, run_dir))
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"steps {args.steps}, batch {args.batch_size} pairs, crop {args.crop_size}, ", end="")
    print(f"{args.threads} threads in all\n")
    print("| processes | pairs/s (training) | wall s | final NMI | final B–T mIoU | best B–T mIoU |")
    print("|---|---|---|---|---|---|")
    for processes in args.processes:
        rows = [row for row in results if row["processes"] == processes]

        def cell(values: list[float], digits: int) -> str:
            return f"{np.mean(values):.{digits}f}" + (
                f" ± {np.std(values):.{digits}f}" if len(values) > 1 else ""
            )

        cells = [
            cell([r["pairs_per_s"] for r in rows], 2),
            cell([r["wall_s"] for r in rows], 1),
            cell([r["final"]["nmi"] for r in rows], 3),
            cell([r["final"]["bt_miou"] for r in rows], 3),
            cell([r["best"]["bt_miou"] for r in rows], 3),
        ]
        print(f"| {processes} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
