"""Median time of one DGC training step at the paper's setting (CPU by default).

Setting: batch 4 crop pairs, 64 x 64 crops, 301 bands, K = 4, a synthetic 256 x 256 leaf scene.
Each variant gets ``--warmup`` untimed steps, then ``--steps`` timed ones; pixels per second
counts the crop pixels of a step (2 x batch x crop^2).

Usage::

    python benchmarks/bench_train_step.py --threads 2 --steps 15
    python benchmarks/bench_train_step.py --variants default,paper-channels,full-bands,second-pass

Side by side with another tree (e.g. ``git worktree add /tmp/old HEAD~3``): ``--compare /tmp/old
.`` runs the benchmark in a child process per tree (that tree first on ``PYTHONPATH``),
alternating for ``--rounds`` rounds, and prints every run and the median of the runs' medians
per tree; the machine's drift then hits both trees alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.model.network import DGCModel
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import PairStream, SampledCube
from napari_dgc.training.trainer import Trainer

VARIANTS = {
    "default": {},
    "paper-channels": {"model": {"spectral_channels": 32}},
    "full-bands": {"model": {"spectral_bands": None}},
    "full-bands-paper-channels": {"model": {"spectral_bands": None, "spectral_channels": 32}},
    "no-meanshift": {"model": {"meanshift_iters": 0}},
}


def make_config(variant: str, clusters: int, crop: int, batch: int) -> TrainConfig:
    """TrainConfig of a named variant (the variants differ in model settings only)."""
    model = ModelConfig(n_clusters=clusters, **VARIANTS[variant].get("model", {}))
    return TrainConfig(model=model, device="cpu").with_settings(
        {"data.crop_size": crop, "data.batch_size": batch}
    )


def time_variant(
    cube: np.ndarray, config: TrainConfig, warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each timed step.

    On a shared machine the wall clock includes time the process waited for a core; with one
    thread the CPU time is what the step costs on an idle core.
    """
    source = SampledCube(cube, "synthetic")
    stream = PairStream.for_config([source], config.data, config.seed)
    torch.manual_seed(config.seed)
    model = DGCModel(cube.shape[-1], config.model)
    stats = compute_band_statistics([source], config.model.brightness_norm)
    model.set_normalization(stats.offset, stats.scale, stats.brightness_floor)
    trainer = Trainer(model, stream, config, torch.device("cpu"))
    wall, cpu = [], []
    for index in range(warmup + steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        trainer.step()
        if index >= warmup:
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def main() -> None:
    """Run the benchmark and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--variants", default="default")
    parser.add_argument(
        "--compare", nargs="+", metavar="TREE", help="source trees to run alternately in child processes"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --compare")
    args = parser.parse_args()
    if args.compare:
        compare_trees(args)
        return
    torch.set_num_threads(args.threads)
    cube = make_leaf_scene(256, 256, args.bands, seed=0).cube
    pixels = 2 * args.batch * args.crop**2
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.bands} bands, "
        f"batch {args.batch} pairs of {args.crop}x{args.crop}, K={args.clusters}"
    )
    for variant in args.variants.split(","):
        config = make_config(variant, args.clusters, args.crop, args.batch)
        wall, cpu = time_variant(cube, config, args.warmup, args.steps)
        median = statistics.median(wall)
        print(
            f"{variant:26s} wall median {median * 1e3:7.1f} ms/step (min {min(wall) * 1e3:7.1f})"
            f"  {pixels / median / 1e3:6.1f} kpx/s | CPU median {statistics.median(cpu) * 1e3:7.1f}"
            f" ms/step  ({len(wall)} steps)",
            flush=True,
        )


def compare_trees(args: argparse.Namespace) -> None:
    """Run this benchmark for each tree in ``args.compare`` alternately; print per-tree medians."""
    forwarded = [
        f"--threads={args.threads}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--bands={args.bands}",
        f"--clusters={args.clusters}",
        f"--crop={args.crop}",
        f"--batch={args.batch}",
        f"--variants={args.variants.split(',')[0]}",
    ]
    runs: dict[str, list[tuple[float, float]]] = {tree: [] for tree in args.compare}
    for round_index in range(args.rounds):
        for tree in args.compare:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
            output = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *forwarded],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            wall, cpu = (float(value) for value in re.findall(r"median\s+([\d.]+) ms/step", output))
            runs[tree].append((wall, cpu))
            print(
                f"round {round_index + 1} {tree}: wall median {wall:.1f} ms, CPU median {cpu:.1f} ms",
                flush=True,
            )
    for tree, results in runs.items():
        print(
            f"{tree}: median of {len(results)} runs: wall {statistics.median(r[0] for r in results):.1f}"
            f" ms/step, CPU {statistics.median(r[1] for r in results):.1f} ms/step"
        )


if __name__ == "__main__":
    main()
