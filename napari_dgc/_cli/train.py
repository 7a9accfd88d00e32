"""``napari-dgc train``: train a DGC model on cubes, writing checkpoints to a run folder.

::

    napari-dgc train CUBE... --clusters K --steps N --checkpoint-every M --out RUN [options]
    napari-dgc train CUBE... --out RUN --set model.brightness_norm=false --set learning_rate=3e-4
    napari-dgc train [CUBE...] --resume RUN [--steps N]

Cubes may be in any format :func:`napari_dgc.io.open_cube` reads; only the windows the crop
pairs need are read. A progress line on stderr shows the step, losses, active clusters and
speed; Ctrl-C stops after the last complete checkpoint, and ``--resume RUN`` continues it
(on the cubes listed in the run unless others are given, up to the run's own step count
unless ``--steps`` is given).
"""

from __future__ import annotations

import argparse
import sys
import time

from napari_dgc.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        usage="napari-dgc train CUBE... --out RUN [options] | napari-dgc train [CUBE...] --resume RUN",
        help="train a DGC model on hyperspectral cubes",
        description=(
            "Train Deep Global Clustering on one or more cubes of the same bands. Checkpoints "
            "go to the run folder; browse them with napari-dgc segment or the napari plugin."
        ),
    )
    parser.add_argument("cubes", nargs="*", metavar="CUBE",
                        help="training cubes (any format); with --resume, default: the run's cubes")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="RUN", help="new run folder")
    target.add_argument("--resume", metavar="RUN", help="continue this run from its latest checkpoint")
    parser.add_argument("--clusters", type=int, default=None, metavar="K",
                        help="clusters (default 4; a resumed run keeps its own)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="total steps (default 2000; a resumed run keeps its own)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="M",
                        help="steps between checkpoints (default 100; a resumed run keeps its own)")
    parser.add_argument("--crop-size", type=int, default=64, help="crop side in pixels (default 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="crop pairs per step (default 4)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--restarts", type=int, default=None, metavar="N",
                        help="starts trained for --set restart_steps=... steps each (default 200) "
                             "before the best-separated one continues (default 3; 1: no selection)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="any other training setting, e.g. --set learning_rate=3e-4 or "
                             "--set model.brightness_norm=false (repeatable; new runs only; "
                             "names in docs/training.md)")
    parser.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    from napari_dgc.model.network import ModelConfig
    from napari_dgc.training.loop import TrainConfig, apply_overrides

    settings = {
        "model": ModelConfig(n_clusters=4 if args.clusters is None else args.clusters),
        "steps": 2000 if args.steps is None else args.steps,
        "checkpoint_every": 100 if args.checkpoint_every is None else args.checkpoint_every,
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": args.device,
    }
    if args.lr is not None:
        settings["learning_rate"] = args.lr
    if args.restarts is not None:
        settings["restarts"] = args.restarts
    config = TrainConfig(**settings)
    if not args.overrides:
        return config
    return TrainConfig.from_dict(apply_overrides(config.to_dict(), args.overrides))


def run(args: argparse.Namespace) -> int:
    """Train; return the exit code (bad input raises DGCError, reported by the dispatcher)."""
    import torch

    from napari_dgc.training.loop import (CheckpointEvent, FinishedEvent, ProgressEvent,
                                     StartSelectedEvent, train)

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    resume = args.resume is not None
    if resume and (args.overrides or args.restarts is not None):
        raise ConfigError("--set and --restarts apply to new runs only: a resumed run keeps its "
                          "own settings")
    config = _config(args)
    cubes = list(args.cubes)
    if resume:
        from napari_dgc.run_folder import RunDirectory

        # The run's own settings apply; --clusters only has to agree if it was given.
        run = RunDirectory.open(args.resume)
        run_config = run.config
        if args.clusters is not None and args.clusters != run_config.model.n_clusters:
            raise ConfigError(
                f"{args.resume}: the run has {run_config.model.n_clusters} clusters, "
                f"not {args.clusters}"
            )
        config = type(config).from_dict({
            **config.to_dict(),
            "model": run_config.model.to_dict(),
            "restarts": run_config.restarts,
            "steps": run_config.steps if args.steps is None else args.steps,
            "checkpoint_every": (run_config.checkpoint_every if args.checkpoint_every is None
                                 else args.checkpoint_every),
        })
        cubes = cubes or list(run.dataset_files)
    elif not cubes:
        raise ConfigError("give at least one cube to train on")
    run_dir = args.resume if resume else args.out
    last_line = 0.0
    for event in train(cubes, config, run_dir, resume=resume):
        if isinstance(event, ProgressEvent) and not args.quiet:
            now = time.monotonic()
            if now - last_line >= 0.5 or event.run_step == event.run_total_steps:
                last_line = now
                rate = event.run_step / event.elapsed_s if event.elapsed_s > 0 else 0.0
                where = f"start {event.start + 1}/{config.restarts}  " if config.restarts > 1 else ""
                print(f"\rstep {event.run_step}/{event.run_total_steps}  {where}"
                      f"loss {event.losses['total']:+.4f}  active {event.active_clusters}  "
                      f"{rate:.2f} steps/s ", end="", file=sys.stderr, flush=True)
        elif isinstance(event, CheckpointEvent) and not args.quiet:
            print(f"\ncheckpoint {event.checkpoint_id} written", file=sys.stderr, flush=True)
        elif isinstance(event, StartSelectedEvent) and not args.quiet:
            scores = ", ".join(f"{value:.4g}" for value in event.separations)
            print(f"\nstart {event.start + 1} of {len(event.separations)} continues "
                  f"(spectral separation per start: {scores})", file=sys.stderr, flush=True)
        elif isinstance(event, FinishedEvent):
            print(f"finished at step {event.step}: {event.run_dir}")
    return 0
