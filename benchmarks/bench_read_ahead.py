"""Training steps with and without reading the next batch ahead, cubes cold in the page cache.

Writes ``--cubes`` float32 ``.npy`` cubes of ``--size`` x ``--bands`` (default 4 of
1000 x 1000 x 301, 1.2 GB each) into a scratch folder, then for each of ``--rounds`` rounds
and for read-ahead off and on (alternating which goes first), evicts the cubes from the page
cache and times ``--steps`` training steps of the default settings (:class:`Trainer`, the same
seed, so both train on the same pairs to the same weights, which is checked). Reported: the
median and mean seconds per step of each run, their medians over the rounds and the ratio
off / on (above 1: reading ahead is faster). The dataset normalisation and one untimed
two-step warm-up run come first.

Timing needs a quiet machine and ~5 GB of scratch disk; the lead runs it there::

    python benchmarks/bench_read_ahead.py --cubes 4 --size 1000x1000 --bands 301 --steps 30 --rounds 3

A smoke test of the script::

    python benchmarks/bench_read_ahead.py --size 128x128 --bands 30 --steps 4 --rounds 1
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segmentation import _evict, make_cube

from napari_dgc.config import TrainConfig
from napari_dgc.model.device import resolve_device
from napari_dgc.model.network import DGCModel
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import PairStream, SampledCube, open_sources
from napari_dgc.training.trainer import Trainer


def time_steps(
    sources: list[SampledCube],
    config: TrainConfig,
    normalization: tuple,
    steps: int,
    *,
    read_ahead: bool,
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Seconds of each of ``steps`` training steps from a fresh model, and the final weights."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = DGCModel(sources[0].n_bands, config.model)
    model.set_normalization(*normalization)
    stream = PairStream.for_config(sources, config.data, config.seed, read_ahead=read_ahead)
    trainer = Trainer(model, stream, config, device)
    seconds = []
    try:
        for _ in range(steps):
            started = time.perf_counter()
            trainer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - started)
    finally:
        stream.close()  # waits for the batch being read ahead: not timed
    return seconds, {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def main() -> None:
    """Write the cubes, run the rounds and print one line per run and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=4)
    parser.add_argument("--size", default="1000x1000", help="ROWSxCOLS of each cube")
    parser.add_argument("--bands", type=int, default=301)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (the default setting: auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder of the cubes (default: temp dir)")
    args = parser.parse_args()
    rows, cols = (int(value) for value in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(device=args.device)
    scratch = Path(tempfile.mkdtemp(prefix="bench-read-ahead-", dir=args.scratch))
    try:
        paths = [scratch / f"cube{index}.npy" for index in range(args.cubes)]
        for index, path in enumerate(paths):
            make_cube(path, rows, cols, args.bands, seed=index)
        sources = open_sources(paths)
        statistics_ = compute_band_statistics(
            sources, config.model.brightness_norm, config.data.normalization_pixels
        )
        normalization = (statistics_.offset, statistics_.scale, statistics_.brightness_floor)
        print(
            f"{args.cubes} cubes of {rows}x{cols}x{args.bands} float32 "
            f"({rows * cols * args.bands * 4 / 1e9:.2f} GB each), {args.steps} steps of the default "
            f"settings (batch {config.data.batch_size}, crop {config.data.crop_size}, "
            f"{config.data.pairs_per_cube} pairs per cube), device {resolve_device(config.device)}, "
            f"torch {torch.get_num_threads()} thread(s), cold page cache",
            flush=True,
        )
        # One untimed run first: the process's one-time costs (imports, allocations) go to neither.
        time_steps(sources, config, normalization, min(2, args.steps), read_ahead=False)
        medians: dict[bool, list[float]] = {False: [], True: []}
        means: dict[bool, list[float]] = {False: [], True: []}
        weights: dict[bool, dict] = {}
        for round_index in range(args.rounds):
            for read_ahead in (False, True) if round_index % 2 == 0 else (True, False):
                for path in paths:
                    _evict(path)
                seconds, weights[read_ahead] = time_steps(
                    sources, config, normalization, args.steps, read_ahead=read_ahead
                )
                medians[read_ahead].append(statistics.median(seconds))
                means[read_ahead].append(statistics.fmean(seconds))
                print(
                    f"round {round_index} read-ahead {'on ' if read_ahead else 'off'}: median "
                    f"{medians[read_ahead][-1]:.4f} s/step, mean {means[read_ahead][-1]:.4f} s/step, "
                    f"total {sum(seconds):.2f} s",
                    flush=True,
                )
        same = all(torch.equal(weights[False][name], weights[True][name]) for name in weights[False])
        off_median, on_median = statistics.median(medians[False]), statistics.median(medians[True])
        off_mean, on_mean = statistics.median(means[False]), statistics.median(means[True])
        for label, median, mean in (("off", off_median, off_mean), ("on ", on_median, on_mean)):
            print(f"read-ahead {label}: median {median:.4f} s/step, mean {mean:.4f} s/step (rounds median)")
        print(
            f"ratio off/on: median {off_median / on_median:.2f}x, mean {off_mean / on_mean:.2f}x; "
            f"final weights {'identical' if same else 'DIFFER'}"
        )
        if not same:
            raise SystemExit("read-ahead changed the training: the final weights differ")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
