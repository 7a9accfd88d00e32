"""``napari-dgc demo``: open napari with the synthetic leaf scene and the DGC panel docked."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="open napari with a synthetic leaf scene and the DGC: Train panel",
        description=(
            "Open napari with the bundled synthetic leaf scene (pseudo-RGB, cube and its "
            "ground truth) and the 'DGC: Train' panel docked. With --screenshot, save a "
            "picture of the whole window and exit (works headless under Xvfb)."
        ),
    )
    parser.add_argument("--screenshot", metavar="PNG", help="save a window screenshot here and exit")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="N",
        help="start a short training of N steps right away (0: do not start)",
    )
    parser.add_argument(
        "--checkpoints-before-screenshot",
        type=int,
        default=2,
        metavar="N",
        help="with --train-steps and --screenshot: wait for N checkpoints, then take the picture",
    )
    parser.add_argument("--size", type=int, default=192, metavar="PX", help="scene size in pixels")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from napari_dgc._qt.demo import run_demo

    return run_demo(
        screenshot=args.screenshot,
        train_steps=args.train_steps,
        checkpoints_before_screenshot=args.checkpoints_before_screenshot,
        scene_size=args.size,
    )
