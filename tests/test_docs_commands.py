"""Every ``napari-dgc ...`` command line in README.md and docs/*.md runs and exits 0.

Collected: the lines of fenced code blocks that start with ``napari-dgc `` (after a ``$ ``
prompt; indented lines below one continue it unless the block has prompts; ``# comments``
dropped) and inline code spans that start with ``napari-dgc ``. The lines of one block run in
order in one folder, so ``segment ... --out labels/`` followed by ``evaluate labels/x.tif``
checks that ``segment`` really writes ``labels/x.tif``. An inline span naming only a sub-command
(``napari-dgc info``) is checked to be one, not run.

Usage grammar and placeholders (``CUBE...``, ``[--steps N]``, ``auto|cpu|cuda``) are expanded as
for ``--help`` (tests/_command_lines.py); inputs the docs name but we cannot ship
(``cube.hdr``, ``data/*.hdr``, ``merge.json``, ``runs/leaf`` for a resume) are made in the
folder as tiny fixtures; trainings run with tiny settings and a documented checkpoint id the
tiny run lacks becomes its latest. Lines asking for ``--device cuda`` are only parsed where
PyTorch has no CUDA. Every failing line of a block is reported with its exit status and error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from _command_lines import (
    Fixtures,
    cuda_available,
    expand_usage,
    make_template_run,
    needs_cuda,
    option_value,
    parses,
    prepare,
    run_cli,
    substitute,
)

from napari_dgc.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class DocLines:
    """The command lines of one fenced block (run in order) or one inline code span."""

    path: str
    kind: str  # "block" or "inline"
    lines: tuple[tuple[int, str], ...]  # (line number, command text)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.lines[0][0]}"


def _strip_comment(text: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", text).strip()


def _block_commands(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    prompted = any(line.lstrip().startswith("$ ") for _, line in lines)
    commands: list[list] = []
    continues = False
    for number, raw in lines:
        stripped = raw.strip()
        if prompted:
            if stripped.startswith("$ "):
                stripped = stripped[2:].strip()
            elif not continues:
                continues = False
                continue
        if stripped.startswith("napari-dgc ") or stripped == "napari-dgc":
            commands.append([number, stripped])
        elif commands and (continues or (not prompted and raw[:1].isspace() and stripped)):
            commands[-1][1] += " " + stripped
        else:
            continues = False
            continue
        continues = commands[-1][1].endswith("\\")
        commands[-1][1] = commands[-1][1].rstrip("\\").rstrip()
    return [(number, _strip_comment(text)) for number, text in commands]


def collect(path: Path) -> list[DocLines]:
    """The command lines of one Markdown file."""
    name = str(path.relative_to(ROOT))
    items: list[DocLines] = []
    text_lines = path.read_text(encoding="utf-8").splitlines()
    prose: list[tuple[int, str]] = []
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(text_lines, start=1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                commands = _block_commands(block)
                if commands:
                    items.append(DocLines(name, "block", tuple(commands)))
                block = None
            prose.append((number, ""))
        elif block is not None:
            block.append((number, line))
        else:
            prose.append((number, line))
    # Inline spans may wrap across lines of a paragraph, never across a blank line.
    offsets, joined = [], ""
    for number, line in prose:
        offsets.append((len(joined), number))
        joined += line + "\n"
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        span = " ".join(match.group(1).split())
        if "\n\n" in match.group(0) or not span.startswith("napari-dgc "):
            continue
        number = max(n for start, n in offsets if start <= match.start())
        items.append(DocLines(name, "inline", ((number, span),)))
    return items


ITEMS = [item for document in DOCUMENTS for item in collect(document)]


@pytest.fixture(scope="module")
def template_run(tmp_path_factory):
    return make_template_run(tmp_path_factory.mktemp("template"))


def test_collection_finds_the_documented_commands():
    by_place = {item.id: item for item in ITEMS}
    readme = [item for item in ITEMS if item.path == "README.md" and item.kind == "block"]
    assert len(readme) == 1 and [text.split()[1] for _, text in readme[0].lines] == [
        "info",
        "train",
        "train",
        "segment",
        "evaluate",
    ], readme
    training = by_place["docs/training.md:4"]
    assert training.kind == "block" and len(training.lines) == 3
    assert "[--restarts" in training.lines[0][1] or "[--starts" in training.lines[0][1], training
    console = [item for item in ITEMS if item.path == "docs/merge-and-evaluate.md" and item.kind == "block"]
    assert [text.split()[1] for item in console for _, text in item.lines] == ["evaluate"], console
    assert len([item for item in ITEMS if item.kind == "inline"]) >= 10


@pytest.mark.parametrize("item", ITEMS, ids=[item.id for item in ITEMS])
def test_documented_command_lines_run(item: DocLines, template_run, tmp_path):
    failures, report = [], []
    fixtures = Fixtures(tmp_path, template_run)
    made_by_commands: set[Path] = set()
    for number, text in item.lines:
        where = f"{item.path}:{number}: {text}"
        variants = expand_usage(text)
        if item.kind == "inline" and all(len(variant) == 1 for variant in variants):
            unknown = [variant[0] for variant in variants if variant[0] not in SUBCOMMANDS]
            if unknown:
                failures.append(f"{where}\n  {unknown}: not sub-commands of napari-dgc")
            report.append(f"{where}  [names of sub-commands: not run]")
            continue
        for variant in variants:
            top_level = text.split()[1:]
            if top_level in (["--help"], ["--version"]):  # the top-level options need no fixtures
                outcome = run_cli(top_level, tmp_path)
                report.append(f"{where}\n  {outcome.describe().splitlines()[0]}")
                if outcome.code != 0:
                    failures.append(f"{where}\n  {outcome.describe()}")
                continue
            if not variant or variant[0] not in SUBCOMMANDS:
                failures.append(f"{where}\n  variant {variant}: not a napari-dgc sub-command")
                continue
            substituted = substitute(variant, fixtures)
            try:
                argv, notes = prepare(substituted, fixtures, made_by_commands)
            except SystemExit:
                error = parses(substituted)
                failures.append(f"{where}\n  napari-dgc {' '.join(substituted)}: usage error:\n    {error}")
                continue
            if needs_cuda(argv) and not cuda_available():
                error = parses(argv)
                report.append(f"{where}  [--device cuda, no CUDA here: parsed only: {error or 'ok'}]")
                if error:
                    failures.append(f"{where}\n  {error}")
                continue
            outcome = run_cli(argv, tmp_path)
            report.append(f"{where}\n  {outcome.describe().splitlines()[0]}  {'; '.join(notes)}")
            if outcome.code != 0:
                failures.append(f"{where}\n  {outcome.describe()}")
            for option in ("--out", "--json", "--csv"):
                value = option_value(argv, option)
                if value is not None:
                    made_by_commands.add((tmp_path / argv[value]).resolve())
                    made_by_commands.add(tmp_path / argv[value])
    print(*report, sep="\n")
    assert not failures, "documented command lines that fail:\n" + "\n".join(failures)
