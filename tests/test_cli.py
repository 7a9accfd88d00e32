"""The CLI dispatcher: every sub-command registers, bad input exits non-zero with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_dgc import __version__
from napari_dgc.cli import SUBCOMMANDS, build_parser, main


def test_every_subcommand_registers_with_help():
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_console_script_runs_as_module():
    result = subprocess.run(
        [sys.executable, "-m", "napari_dgc.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert __version__ in result.stdout
