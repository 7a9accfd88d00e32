"""The CLI dispatcher: every sub-command registers, bad input exits non-zero with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_dgc import __version__
from napari_dgc.cli import SUBCOMMANDS, build_parser, main, parse_args


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


ANYWHERE_CASES = {
    "info": (["cube.mat"], [["--key", "cube"], ["--shape", "2", "3"]]),
    "train": (["a.npy", "b.npy"], [["--out", "run"], ["--steps", "5"], ["--set", "seed=1"]]),
    "segment": (
        ["run", "a.npy", "b.npy"],
        [["--checkpoint", "step-000100"], ["--out", "maps"], ["--probabilities"]],
    ),
    "evaluate": (["labels.tif", "mask.png"], [["--mapping", "merge.json"], ["--json", "iou.json"]]),
    "spectra": (["labels.tif", "cube.npy"], [["--out", "spectra.csv"], ["--mapping", "merge.json"]]),
    "demo": ([], [["--size", "64"], ["--screenshot", "x.png"]]),
}


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_options_may_come_anywhere_among_the_positionals(command):
    positionals, options = ANYWHERE_CASES[command]
    flat = [text for option in options for text in option]
    expected = vars(parse_args([command, *positionals, *flat]))
    assert expected["command"] == command
    orders = []
    n_gaps = len(positionals) + 1
    for start in range(n_gaps):
        # every option in one gap between (or around) the positionals, and spread over the gaps
        orders.append([*positionals[:start], *flat, *positionals[start:]])
        gaps: list[list[str]] = [[] for _ in range(n_gaps)]
        for offset, option in enumerate(options):
            gaps[(start + offset) % n_gaps].extend(option)
        orders.append(
            [
                *gaps[0],
                *(text for gap, positional in zip(gaps[1:], positionals) for text in (positional, *gap)),
            ]
        )
    for argv in orders:
        assert vars(parse_args([command, *argv])) == expected, argv


def test_the_issue_command_line_parses():
    args = parse_args(["segment", "RUN", "--checkpoint", "step-000100", "CUBE", "--out", "D"])
    assert (args.inputs, args.checkpoint, args.out) == (["RUN", "CUBE"], "step-000100", "D")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "a.npy", "--out", "r", "--resume", "s"], "not allowed with argument"),
        (["train", "a.npy"], "one of the arguments --out --resume is required"),
        (["segment", "run", "a.npy"], "the following arguments are required: --out"),
        (["segment", "run", "--bogus", "a.npy", "--out", "d"], "unrecognized arguments: --bogus"),
        (["info"], "the following arguments are required: CUBE"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_usage_errors_still_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_input_is_one_line_with_options_first(tmp_path, capsys):
    assert main(["info", "--key", "cube", str(tmp_path / "missing.mat")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-dgc info: error: ") and err.count("\n") == 1, err


def test_a_full_disk_while_writing_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import napari_dgc._cli.evaluate as evaluate_command

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.json"))

    monkeypatch.setattr(evaluate_command, "_run", full_disk)
    assert main(["evaluate", "labels.tif", "mask.png", "--json", str(tmp_path / "report.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"napari-dgc evaluate: error: {tmp_path / 'report.json'}: No space left on device"]
