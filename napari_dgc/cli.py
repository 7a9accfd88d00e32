"""The ``napari-dgc`` command line: ``info``, ``train``, ``segment``, ``evaluate``, ``demo``.

Each sub-command lives in its own module under :mod:`napari_dgc._cli` and exposes
``add_parser(subparsers)`` (which registers its arguments and sets ``handler``). Those modules
import nothing heavy at module level and their handlers import the engine, so ``napari-dgc
--help``, every ``napari-dgc SUB --help`` and ``napari-dgc info`` do not pay for importing torch
or napari (``tests/test_cli_usage.py`` checks it).

Options may come anywhere among a sub-command's positional arguments, as the usage lines show
(``napari-dgc segment RUN --checkpoint ID CUBE... --out DIR``): :func:`parse_args` picks the
sub-command first, then parses its arguments with the sub-parser's ``parse_intermixed_args``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from napari_dgc import __version__
from napari_dgc.errors import DGCError

SUBCOMMANDS = ("info", "train", "segment", "evaluate", "spectra", "demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command registered.

    Returns
    -------
    argparse.ArgumentParser
        The ``napari-dgc`` parser; its sub-parsers are reachable through :func:`subparser`.
    """
    parser = argparse.ArgumentParser(
        prog="napari-dgc",
        description="Deep Global Clustering for hyperspectral images (headless engine + napari).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dgc {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"napari_dgc._cli.{name}").add_parser(subparsers)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """Return the sub-parser of ``command`` registered on ``parser`` by :func:`build_parser`.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A parser made by :func:`build_parser`.
    command : str
        One of :data:`SUBCOMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser (its ``prog`` is ``napari-dgc COMMAND``).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise LookupError("the parser has no sub-commands")  # pragma: no cover - build_parser adds them


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line, options intermixed with positional arguments in any order.

    argparse's ``parse_intermixed_args`` does not work on a parser with sub-parsers, so the
    sub-command is picked first (the top-level parser takes no option values, so it is the first
    argument) and the rest is parsed by its sub-parser's ``parse_intermixed_args``. Anything else
    (``--help``, ``--version``, no or an unknown sub-command) goes to the top-level parser, which
    prints help, the version or a usage error.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The sub-command's arguments, with ``command`` and ``handler`` set.

    Raises
    ------
    SystemExit
        For ``--help``/``--version`` (code 0) and usage errors (code 2), as argparse does.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not arguments or arguments[0] not in SUBCOMMANDS:
        return parser.parse_args(arguments)
    command = arguments[0]
    args = subparser(parser, command).parse_intermixed_args(arguments[1:])
    args.command = command
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code.

    Bad input (any :class:`~napari_dgc.errors.DGCError`, a missing file) exits with code 2 and
    a one-line reason on stderr instead of a traceback.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``); options may come
        anywhere among the positional arguments.

    Returns
    -------
    int
        0 on success, 2 for bad input or a failed read or write (e.g. a full disk), 130 when
        interrupted.
    """
    args = parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (DGCError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"napari-dgc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's side (a full disk, a lost mount): one line naming the file
        where = f"{error.filename}: " if error.filename else ""
        print(f"napari-dgc {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-dgc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
