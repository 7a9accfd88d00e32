"""Sub-commands of the ``napari-dgc`` CLI, one module each (see :mod:`napari_dgc.cli`)."""

from __future__ import annotations

import argparse


def add_cube_open_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    """Add ``--key`` and ``--shape``, how :func:`napari_dgc.io.open_cube` opens MATLAB cubes.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command's parser.
    note : str
        Appended to both helps (e.g. that the values are recorded in the run).
    """
    parser.add_argument("--key", metavar="K", help=f"MATLAB variable holding the cube{note}")
    parser.add_argument(
        "--shape",
        nargs=2,
        type=int,
        metavar=("ROWS", "COLS"),
        help="spatial shape of a MATLAB 2-D bands x pixels matrix, pixels in column-major order "
        f"(default: the row and column counts the file stores, e.g. 'lines'/'cols'){note}",
    )
