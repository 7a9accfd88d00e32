"""``napari-dgc info CUBE``: describe a cube without reading its values."""

from __future__ import annotations

import argparse

from napari_dgc._cli import add_cube_open_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``info`` sub-command."""
    parser = subparsers.add_parser(
        "info",
        help="describe a hyperspectral cube (format, shape, dtype, bands, wavelengths, size)",
        description=(
            "Print a cube's format, shape, data type, band count and band axis (ENVI "
            "interleave), wavelength range, size and path. Only headers are read."
        ),
    )
    parser.add_argument("cube", metavar="CUBE", help="ENVI .hdr/data file, .mat, .npy, .tif or PNG folder")
    add_cube_open_options(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from napari_dgc.io import describe_cube, open_cube

    cube = open_cube(args.cube, key=args.key, shape=tuple(args.shape) if args.shape else None)
    print(describe_cube(cube))
    return 0
