"""Every usage line ``napari-dgc SUB --help`` prints runs; ``--help`` imports neither torch nor napari.

The usage lines are read from the real ``--help`` output and expanded into concrete variants
(every alternative, without and with the optional parts, see ``tests/_command_lines.py``); the
placeholders (CUBE, RUN, ID, K, N, ...) become tiny fixtures: 24 x 24 x 10 cubes and a 4-step
run trained by ``napari-dgc train`` once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from _command_lines import (
    Fixtures,
    expand_usage,
    help_usage,
    make_template_run,
    parses,
    prepare,
    run_cli,
    substitute,
)

from napari_dgc.cli import SUBCOMMANDS

HEAVY_MODULES = ("torch", "napari", "qtpy", "PyQt5", "magicgui")


@pytest.fixture(scope="module")
def template_run(tmp_path_factory):
    """A finished 4-step run (checkpoints step-000002 and step-000004) made by the CLI."""
    return make_template_run(tmp_path_factory.mktemp("template"))


def test_help_imports_neither_torch_nor_napari():
    script = textwrap.dedent(
        f"""
        import json, sys
        from napari_dgc.cli import SUBCOMMANDS, main
        heavy = {HEAVY_MODULES!r}
        found = {{}}
        for argv in [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS]:
            try:
                main(argv)
            except SystemExit as stop:
                assert stop.code == 0, (argv, stop.code)
            found[" ".join(argv)] = [name for name in heavy if name in sys.modules]
        print(json.dumps(found))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(found) == {"--help", *(f"{name} --help" for name in SUBCOMMANDS)}
    assert all(not modules for modules in found.values()), found


def test_usage_expansion_covers_alternatives_and_optional_parts():
    variants = expand_usage(
        "napari-dgc segment (RUN [--checkpoint ID] | --classes MODEL_FOLDER) CUBE... --out DIR [options]"
    )
    assert variants == [
        ["segment", "RUN", "CUBE", "--out", "DIR"],
        ["segment", "--classes", "MODEL_FOLDER", "CUBE", "--out", "DIR"],
        ["segment", "RUN", "--checkpoint", "ID", "CUBE", "CUBE", "--out", "DIR", "options"],
        ["segment", "--classes", "MODEL_FOLDER", "CUBE", "CUBE", "--out", "DIR", "options"],
    ]
    assert expand_usage("napari-dgc train A --out RUN | napari-dgc train [A...] --resume RUN") == [
        ["train", "A", "--out", "RUN"],
        ["train", "--resume", "RUN"],
        ["train", "A", "A", "--resume", "RUN"],
    ]
    assert expand_usage("napari-dgc x [-h] [--s {a,b}] [--d auto|cuda] P") == [
        ["x", "P"],
        ["x", "--s", "a", "--d", "auto", "P"],
        ["x", "--s", "a", "--d", "cuda", "P"],
        ["x", "--s", "b", "--d", "auto", "P"],
        ["x", "--s", "b", "--d", "cuda", "P"],
    ]
    assert expand_usage("napari-dgc info | train") == [["info"], ["train"]]


def test_usage_lines_show_options_among_the_positionals():
    """The issue's case: the segment usage puts --checkpoint between RUN and the cubes."""
    variants = expand_usage(help_usage("segment"))
    assert ["segment", "RUN", "--checkpoint", "ID", "CUBE", "CUBE", "--out", "DIR", "options"] in variants


@pytest.mark.parametrize("command", [name for name in SUBCOMMANDS if name != "demo"])
def test_every_usage_line_runs(command, template_run, tmp_path):
    usage = help_usage(command)
    variants = expand_usage(usage)
    assert variants and all(variant[0] == command for variant in variants), (usage, variants)
    failures, ran = [], []
    for number, variant in enumerate(variants):
        root = tmp_path / f"variant{number}"
        root.mkdir()
        fixtures = Fixtures(root, template_run)
        argv, notes = prepare(substitute(variant, fixtures), fixtures, set())
        outcome = run_cli(argv, root)
        ran.append(f"{' '.join(variant)}  ->  {outcome.describe().splitlines()[0]}  {notes or ''}")
        if outcome.code != 0:
            failures.append(f"usage variant: {' '.join(variant)}\n  {outcome.describe()}")
    print(f"usage: {usage}", *ran, sep="\n")
    assert not failures, "\n".join(failures)


def test_demo_usage_lines(tmp_path):
    """``demo`` without ``--screenshot`` opens a window and waits for the user, so its variants
    are only parsed; the variant with ``--screenshot`` is run by ``test_demo_usage_screenshot``."""
    variants = expand_usage(help_usage("demo"))
    assert len(variants) == 2
    fixtures = Fixtures(tmp_path, tmp_path)
    for variant in variants:
        argv = substitute(variant, fixtures)
        assert parses(argv) is None, (argv, parses(argv))


@pytest.mark.slow
@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (pytest-xvfb provides one)")
def test_demo_usage_screenshot(tmp_path):
    (variant,) = [v for v in expand_usage(help_usage("demo")) if "--screenshot" in v]
    argv = substitute(variant, Fixtures(tmp_path, tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "napari_dgc.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "screenshot.png").is_file()
