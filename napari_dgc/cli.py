"""The ``napari-dgc`` command line: ``info``, ``train``, ``segment``, ``evaluate``, ``demo``.

Each sub-command lives in its own module under :mod:`napari_dgc._cli` and exposes
``add_parser(subparsers)`` (which registers its arguments and sets ``handler``). Modules are
imported lazily by name so ``napari-dgc info`` does not pay for importing torch or napari.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from napari_dgc import __version__
from napari_dgc.errors import DGCError

SUBCOMMANDS = ("info", "train", "segment", "evaluate", "demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="napari-dgc",
        description="Deep Global Clustering for hyperspectral images (headless engine + napari).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dgc {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"napari_dgc._cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code.

    Bad input (any :class:`~napari_dgc.errors.DGCError`, a missing file) exits with code 2 and
    a one-line reason on stderr instead of a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (DGCError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"napari-dgc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-dgc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
