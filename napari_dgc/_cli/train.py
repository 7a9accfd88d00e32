"""``napari-dgc train``: train a DGC model on cubes, writing checkpoints to a run folder.

::

    napari-dgc train CUBE... --out RUN --clusters K --steps N --checkpoint-every M
    napari-dgc train CUBE... --out RUN --set model.brightness_norm=false --set optim.learning_rate=3e-4
    napari-dgc train Samson.mat --out RUN --shape 95 95 --key Y
    napari-dgc train CUBE... --out RUN --white WHITE --dark DARK --bands 450:950 --binning 2
    napari-dgc train --resume RUN --steps N
    torchrun --nproc-per-node 2 -m napari_dgc train CUBE... --out RUN --batch-size 4

The named options and ``--set KEY=VALUE`` come from :mod:`napari_dgc.config`, with their
defaults and help. Cubes may be in any format :func:`napari_dgc.io.open_cube` reads (``--key``
and ``--shape`` as for ``napari-dgc info``; the run records them, so a resume reopens the cubes
the same way); only the windows the crop pairs need are read. A progress line on stderr counts
the steps of all starts together (``run step N/T``) and names the start training and its own
step; Ctrl-C stops after the last complete checkpoint, and ``--resume RUN`` continues it (on the
cubes listed in the run unless others are given).

Under ``torchrun`` every process runs this command and trains on its share of each batch
(:mod:`napari_dgc.training.distributed`); rank 0 alone prints and writes the run folder. When
torchrun restarts the group after a failure (``--max-restarts``), ``--out RUN`` continues the run
from its latest checkpoint instead of refusing the existing folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from napari_dgc._cli import add_cube_open_options
from napari_dgc.config import (
    RESUMABLE_SETTINGS,
    SettingInfo,
    TrainConfig,
    get_setting,
    parse_setting,
    resumed_config,
    settings_of,
)
from napari_dgc.errors import ConfigError

#: The settings that have a named option, e.g. ``--clusters`` for ``model.n_clusters``.
FLAGGED_SETTINGS = [info for info in settings_of() if info.flag]
#: Settings naming reference files (recorded as absolute paths).
REFERENCE_SETTINGS = ("prep.white", "prep.dark")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        usage=(
            "napari-dgc train CUBE... --out RUN [options] | "
            "napari-dgc train [CUBE...] --resume RUN [--steps N]"
        ),
        help="train a DGC model on hyperspectral cubes",
        description=(
            "Train Deep Global Clustering on one or more cubes of the same bands. Checkpoints "
            "go to the run folder; browse them with napari-dgc segment or the napari plugin. "
            "--steps is the step the continuing start trains to; with several starts each start "
            "first trains to the selection step (--set starts.steps=N), so the run trains "
            "steps + (starts - 1) x starts.steps steps in all (the progress line's 'run step N/T'). "
            f"A resumed run keeps its own settings; only {', '.join(RESUMABLE_SETTINGS)} may change: "
            "--resume RUN --steps N trains the continuing start on to step N (a larger N extends a "
            "finished run, one already reached trains nothing; without --steps the run's own "
            "steps apply)."
        ),
    )
    parser.add_argument(
        "cubes",
        nargs="*",
        metavar="CUBE",
        help="training cubes (any format); with --resume, default: the run's cubes",
    )
    add_cube_open_options(parser, "; recorded in the run")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="RUN", help="new run folder")
    target.add_argument("--resume", metavar="RUN", help="continue this run from its latest checkpoint")
    for info in FLAGGED_SETTINGS:
        parser.add_argument(
            info.flag,
            dest=info.key,
            type=_argument_type(info),
            default=None,
            metavar=info.flag.lstrip("-").split("-")[0].upper(),
            help=f"{info.help} (default {info.default}; setting {info.key})",
        )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for the others before it stops with an "
        "error (default 300; must cover writing one checkpoint)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="any other setting, e.g. --set optim.learning_rate=3e-4 or "
        "--set model.brightness_norm=false (repeatable; new runs only; "
        "names in docs/training.md)",
    )
    parser.set_defaults(handler=run)


def _argument_type(info: SettingInfo) -> Any:
    """The argparse ``type`` of a flagged setting (range checks are the config's)."""
    return info.kind if info.kind in (int, float) else str


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flagged settings given on the command line, by dotted key."""
    values = {info.key: getattr(args, info.key) for info in FLAGGED_SETTINGS}
    return {key: value for key, value in values.items() if value is not None}


def _new_run_config(args: argparse.Namespace) -> TrainConfig:
    changes = _given_settings(args)
    changes.update(parse_setting(text) for text in args.overrides)
    # The run records where its references came from; relative to here means nothing later.
    for key in REFERENCE_SETTINGS:
        if isinstance(changes.get(key), str):
            changes[key] = str(Path(changes[key]).expanduser().resolve())
    return TrainConfig().with_settings(changes)


def _resumed_run_config(args: argparse.Namespace, created: TrainConfig) -> TrainConfig:
    """The run's own settings, with the resumable options given; any other option must agree."""
    if args.overrides:
        raise ConfigError("--set applies to new runs only: a resumed run keeps its own settings")
    changes = {}
    for key, value in _given_settings(args).items():
        if key in RESUMABLE_SETTINGS:
            changes[key] = value
        elif value != get_setting(created, key):
            raise ConfigError(
                f"{args.resume}: the run has {key} = {get_setting(created, key)}, not {value} (settings "
                f"other than {', '.join(RESUMABLE_SETTINGS)} apply to new runs only)"
            )
    return resumed_config(created, changes)


def _open_cubes(args: argparse.Namespace, run_folder: Any | None) -> list:
    """The training cubes, opened with ``--key``/``--shape``, or as the resumed run recorded them."""
    from napari_dgc.io import open_cube

    given = {}
    if args.key is not None:
        given["key"] = args.key
    if args.shape is not None:
        given["shape"] = tuple(args.shape)
    if args.cubes or run_folder is None:
        return [open_cube(path, **given) for path in args.cubes]
    return [
        open_cube(path, **(given or options))
        for path, options in zip(run_folder.dataset_files, run_folder.dataset_open_options)
    ]


def _progress_line(event: Any, starts: int) -> str:
    """The progress line: run steps of all starts together, then the start and its own step."""
    from napari_dgc.training.events import start_name

    rate = event.run_step / event.elapsed_s if event.elapsed_s > 0 else 0.0
    if starts > 1:
        where = (
            f"run step {event.run_step}/{event.run_total_steps} (all starts)  "
            f"{start_name(event.start, starts)} at its step {event.step}  "
        )
    else:
        where = f"step {event.run_step}/{event.run_total_steps}  "
    return f"{where}loss {event.losses['total']:+.4f}  active {event.active_clusters}  {rate:.2f} steps/s "


def _recommendation_line(run_dir: Any) -> str:
    """Which checkpoint ``segment`` and exports will use, and why."""
    from napari_dgc.run_folder import RunDirectory

    default = RunDirectory.open(run_dir).default_checkpoint()
    return "no checkpoint written" if default is None else f"use: {default[0].checkpoint_id}, {default[1]}"


def _finished_line(run_dir: Any, starts: int, step: int) -> str:
    """The last line: where the continuing start ended and how many steps the run has trained."""
    from napari_dgc.run_folder import RunDirectory
    from napari_dgc.training.events import start_name

    latest = RunDirectory.open(run_dir).latest_checkpoint()
    if starts > 1 and latest is not None:
        return (
            f"finished: {start_name(latest.start)} reached step {latest.step} "
            f"({latest.run_step} run steps, all starts): {run_dir}"
        )
    return f"finished at step {step}: {run_dir}"


def run(args: argparse.Namespace) -> int:
    """Train; return the exit code (bad input raises DGCError, reported by the dispatcher)."""
    import torch

    from napari_dgc.model.device import resolve_device
    from napari_dgc.run_folder import RunDirectory
    from napari_dgc.run_folder.manifest import MANIFEST_NAME
    from napari_dgc.training import distributed
    from napari_dgc.training.loop import train

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout must be positive, got {args.dist_timeout}")
    resume = args.resume is not None
    run_folder = None
    if resume:
        run_folder = RunDirectory.open(args.resume)
        config = _resumed_run_config(args, run_folder.config)
    else:
        config = _new_run_config(args)
        if not args.cubes:
            raise ConfigError("give at least one cube to train on")
        # torchrun restarted the group after a failure: the run continues where it stopped
        # (train() still refuses settings that differ from the run's).
        resume = distributed.is_restart() and (Path(args.out) / MANIFEST_NAME).is_file()
    cubes = _open_cubes(args, run_folder)
    run_dir = args.resume or args.out
    group = distributed.process_group(resolve_device(config.device), args.dist_timeout)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("always", distributed.WorldSizeWarning)
            events = train(cubes, config, run_dir, resume=resume)
            _report(events, config, args.quiet or not group.is_writer, group.is_writer)
    except distributed.DistributedError as error:
        # A gloo group whose peer died can abort the interpreter's exit (std::terminate in its
        # destructor, about one exit in twenty): report as the dispatcher does, exit at once.
        print(f"napari-dgc train: error: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    finally:
        distributed.leave()
    return 0


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Print a warning of the training (e.g. a resume on another number of processes) as one line."""
    print(f"napari-dgc train: warning: {message}", file=sys.stderr, flush=True)


def _report(events: Any, config: TrainConfig, quiet: bool, writer: bool) -> None:
    """Print the progress of ``events`` on stderr (unless ``quiet``) and, on the process that
    writes the run (``writer``), the finished line.
    """
    from napari_dgc.training.events import (
        CheckpointEvent,
        FinishedEvent,
        ProgressEvent,
        StartSelectedEvent,
        start_name,
    )

    starts = config.starts.count
    last_line = 0.0
    for event in events:
        if isinstance(event, ProgressEvent) and not quiet:
            now = time.monotonic()
            if now - last_line >= 0.5 or event.run_step == event.run_total_steps:
                last_line = now
                print(f"\r{_progress_line(event, starts)}", end="", file=sys.stderr, flush=True)
        elif isinstance(event, CheckpointEvent) and not quiet:
            print(f"\ncheckpoint {event.checkpoint_id} written", file=sys.stderr, flush=True)
        elif isinstance(event, StartSelectedEvent) and not quiet:
            scores = ", ".join(f"{value:.4g}" for value in event.scores)
            print(
                f"\n{start_name(event.start)} continues (selection score of starts "
                f"0–{len(event.scores) - 1}: {scores})",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(event, FinishedEvent):
            if not quiet:
                print(file=sys.stderr, flush=True)
            if writer:
                print(_finished_line(event.run_dir, starts, event.step))
                print(_recommendation_line(event.run_dir))
