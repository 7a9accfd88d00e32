"""Run ``napari-dgc`` command lines as written in usage lines and docs, on tiny fixtures.

Shared by ``tests/test_cli_usage.py`` (the ``usage:`` lines of ``--help``) and
``tests/test_docs_commands.py`` (the command lines of README.md and docs/*.md).

A usage line is a small grammar: ``[optional]``, ``(a | b)`` groups, ``a|b`` and ``{a,b}``
word alternatives, ``NAME...`` repetition, upper-case placeholders, ``[options]``.
:func:`expand_usage` turns it into concrete variants: every alternative, once with no optional
part and once with all of them (``-h`` is left out: it would end the run before anything is
checked). :class:`Fixtures` then replaces each placeholder by a real tiny file, folder or
value chosen by the sub-command and the option it belongs to, and :func:`prepare` creates the
inputs a documented command names but we cannot ship (``study/*.hdr``, ``merge.json``...).

Two deliberate departures from the written line, both reported by :func:`describe`:

* ``train`` runs with tiny settings (:data:`FAST_TRAIN`: 4 steps, a checkpoint every 2, 16-pixel
  crops, one start, one thread) replacing or adding to what the line gives, so each run takes
  about a second; the options' names and the files stay as written.
* a documented checkpoint id such as ``step-000600`` becomes the fixture run's latest
  checkpoint when the run has no such step (the tiny run only has steps 2 and 4).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_dgc.cli import SUBCOMMANDS, build_parser, main, subparser

ROWS, COLS, BANDS, CLUSTERS = 24, 24, 10, 3

#: ``train`` options replaced (or added) so that a documented training takes about a second;
#: the number of starts is ``--starts`` (or, before that name, ``--restarts``).
FAST_TRAIN = {
    "--steps": "4",
    "--checkpoint-every": "2",
    "--crop-size": "16",
    "--batch-size": "1",
    "--starts": "1",
    "--restarts": "1",
    "--threads": "1",
}


def train_options() -> set[str]:
    """The option strings the ``train`` sub-command accepts today."""
    return set(subparser(build_parser(), "train")._option_string_actions)


def fast_train_options() -> list[str]:
    """:data:`FAST_TRAIN` as arguments, limited to the options ``train`` accepts."""
    known = train_options()
    return [text for option, value in FAST_TRAIN.items() if option in known for text in (option, value)]


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
CHECKPOINT_ID = re.compile(r"^step-\d{6}$")


# ----------------------------------------------------------------------------------------------
# usage grammar


def _tokens(text: str) -> list[str]:
    return re.findall(r"\[|\]|\(|\)|[^\s\[\]()]+", text)


def _parse(tokens: list[str], pos: int, closing: str | None) -> tuple[tuple, int]:
    """Parse alternatives until ``closing``; return ``("alt", [seq, ...])`` and the next index."""
    alternatives: list[list] = [[]]
    while pos < len(tokens):
        token = tokens[pos]
        if token == closing:
            return ("alt", [("seq", items) for items in alternatives]), pos + 1
        if token in ("]", ")"):
            raise ValueError(f"unbalanced {token!r} in usage {' '.join(tokens)!r}")
        if token == "|":
            alternatives.append([])
            pos += 1
        elif token in ("[", "("):
            inner, pos = _parse(tokens, pos + 1, "]" if token == "[" else ")")
            alternatives[-1].append(("opt", inner) if token == "[" else inner)
        else:
            alternatives[-1].append(_word(token))
            pos += 1
    if closing is not None:
        raise ValueError(f"missing {closing!r} in usage {' '.join(tokens)!r}")
    return ("alt", [("seq", items) for items in alternatives]), pos


def _word(token: str) -> tuple:
    if token.startswith("{") and token.endswith("}"):
        return ("alt", [("word", choice) for choice in token[1:-1].split(",")])
    if "|" in token:
        return ("alt", [("word", choice) for choice in token.split("|")])
    if token.endswith("...") and token != "...":
        return ("repeat", token[:-3])
    return ("word", token)


def _expand(node: tuple, full: bool) -> list[list[str]]:
    kind, value = node
    if kind == "word":
        return [[]] if value in ("-h", "--help", "...") else [[value]]
    if kind == "repeat":
        return [[value, value]] if full else [[value]]
    if kind == "opt":
        return _expand(value, full) if full else [[]]
    if kind == "alt":
        return [variant for alternative in value for variant in _expand(alternative, full)]
    variants: list[list[str]] = [[]]
    for item in value:
        variants = [head + tail for head in variants for tail in _expand(item, full)]
    return variants


def expand_usage(text: str) -> list[list[str]]:
    """Concrete variants of a usage text such as ``napari-dgc segment (RUN | X) CUBE... --out DIR``.

    Every alternative appears, with no optional part and with all optional parts; ``NAME...``
    stands once and twice. Alternatives at the top that do not start with ``napari-dgc`` (as
    in ``napari-dgc info | train``) get it prepended. The ``napari-dgc`` word is dropped.
    """
    tree, _ = _parse(_tokens(text), 0, None)
    variants: list[list[str]] = []
    for alternative in tree[1]:
        for full in (False, True):
            for variant in _expand(alternative, full):
                if variant and variant[0] == "napari-dgc":
                    variant = variant[1:]
                if variant not in variants:
                    variants.append(variant)
    return variants


def help_usage(command: str | None) -> str:
    """The ``usage:`` text that ``napari-dgc [COMMAND] --help`` prints, joined on one line."""
    argv = ["--help"] if command is None else [command, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    text = out.getvalue()
    assert text.startswith("usage: "), text[:200]
    return " ".join(text[len("usage: ") :].split("\n\n")[0].split())


# ----------------------------------------------------------------------------------------------
# fixtures


def write_cube(path: Path, seed: int = 1, cube: np.ndarray | None = None) -> Path:
    """Write a tiny synthetic leaf cube (24 x 24 x 10; or ``cube``) in the format ``path``'s
    suffix names; ENVI headers state the wavelengths (400-1000 nm)."""
    from napari_dgc.datasets.synthetic import make_leaf_scene

    scene = make_leaf_scene(ROWS, COLS, BANDS, seed=seed)
    cube = scene.cube if cube is None else cube
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, cube)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, np.moveaxis(cube, -1, 0))
    elif suffix == ".mat":
        from scipy.io import savemat

        savemat(path, {"cube": cube})
    elif suffix == ".hdr":
        from _io_helpers import write_envi

        write_envi(path.parent, cube, name=path.stem, data_suffix=".raw", wavelengths=scene.wavelengths)
    else:
        raise ValueError(f"{path}: no cube fixture for this suffix")
    return path


def write_matrix_cube(path: Path) -> Path:
    """Write a MATLAB ``bands x pixels`` matrix (variable ``cube``) of shape ROWS x COLS."""
    from scipy.io import savemat

    from napari_dgc.datasets.synthetic import make_leaf_scene

    cube = make_leaf_scene(ROWS, COLS, BANDS, seed=1).cube
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"cube": cube.reshape(ROWS * COLS, BANDS, order="F").T})
    return path


def write_labels(path: Path, n_clusters: int = CLUSTERS) -> Path:
    """Write a cluster map (ids ``0..n_clusters-1``) as the suffix says (.tif, .png or .npy)."""
    labels = (np.arange(ROWS * COLS).reshape(ROWS, COLS) % n_clusters).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, labels)
    elif path.suffix.lower() == ".png":
        from PIL import Image

        Image.fromarray(labels).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, labels)
    return path


def write_mask(path: Path) -> Path:
    """Write a ground-truth mask PNG: background, a tissue square and a lesion in it."""
    from PIL import Image

    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[4:20, 4:20] = 1
    mask[8:12, 8:12] = 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def write_mapping(path: Path, n_clusters: int = CLUSTERS) -> Path:
    """Write a class mapping file (this project's form) over ``n_clusters`` clusters."""
    from napari_dgc.analysis.classes import ClassMapping, SemanticClass

    mapping = ClassMapping(
        [
            SemanticClass("background", "#000000", [0]),
            SemanticClass("tissue", "#00ff00", list(range(1, n_clusters))),
        ],
        n_clusters=n_clusters,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mapping.to_json()), encoding="utf-8")
    return path


def checkpoint_ids(run: Path) -> list[str]:
    """The checkpoint ids listed in a run folder's ``run.json``."""
    document = json.loads((run / "run.json").read_text(encoding="utf-8"))
    found = document.get("checkpoints", [])
    return [item if isinstance(item, str) else item.get("id") for item in found]


def make_template_run(root: Path) -> Path:
    """Train a 3-cluster, 4-step run (checkpoints step-000002, step-000004) with ``napari-dgc train``."""
    cube = write_cube(root / "cube.npy")
    outcome = run_cli(
        [
            "train",
            str(cube),
            "--out",
            str(root / "run"),
            "--clusters",
            str(CLUSTERS),
            *fast_train_options(),
            "--quiet",
        ],
        root,
    )
    assert outcome.code == 0, outcome.describe()
    return root / "run"


def dataset_files(run: Path) -> list[str]:
    """The cubes a run folder was trained on, as its ``run.json`` lists them."""
    document = json.loads((run / "run.json").read_text(encoding="utf-8"))
    return [str(item if isinstance(item, str) else item["path"]) for item in document["dataset_files"]]


@dataclass
class Fixtures:
    """Creates the inputs of one command line under ``root``, once each.

    ``template_run`` is a finished tiny training run (trained by ``napari-dgc train``); every
    run folder a command line needs is a fresh copy of it.
    """

    root: Path
    template_run: Path
    made: dict[str, Path] = field(default_factory=dict)
    counter: int = 0

    def _new(self, name: str) -> Path:
        self.counter += 1
        stem, dot, suffix = name.partition(".")
        return self.root / f"{stem}{self.counter}{dot}{suffix}"

    def cube(self) -> Path:
        self.counter += 1
        return write_cube(self.root / f"cube{self.counter}.npy", seed=self.counter)

    def run(self, path: Path | None = None) -> Path:
        target = path or self._new("run")
        shutil.copytree(self.template_run, target)
        return target

    def model_folder(self, path: Path | None = None) -> Path:
        from napari_dgc.analysis.classes import ClassMapping
        from napari_dgc.analysis.export import export_model_folder

        target = path or self._new("model")
        mapping = ClassMapping.load(write_mapping(self.root / f"{target.name}-mapping.json"))
        export_model_folder(self.template_run, target, mapping)
        return target

    def once(self, key: str, make) -> Path:
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def value(self, command: str, option: str | None, name: str, tokens: list[str]) -> list[str]:
        """Concrete argument(s) for placeholder ``name`` after ``option`` in ``command``."""
        if name == "CUBE":
            if command == "info" and "--shape" in tokens:
                return [str(self.once("matrix", lambda: write_matrix_cube(self.root / "matrix.mat")))]
            if command == "info" and "--key" in tokens:
                return [str(self.once("mat", lambda: write_cube(self.root / "cube.mat")))]
            return [str(self.cube())]
        fixed = {
            ("info", "--key", "K"): "cube",
            (None, None, "ROWS"): str(ROWS),
            (None, None, "COLS"): str(COLS),
            ("train", "--clusters", "K"): str(CLUSTERS),
            ("train", "--steps", "N"): "6",
            ("train", "--starts", "N"): "1",
            ("train", "--checkpoint-every", "M"): "2",
            ("train", "--threads", "T"): "1",
            ("segment", "--checkpoint", "ID"): "step-000002",
            ("segment", "--tile", "N"): "16",
            ("segment", "--workers", "N"): "1",
            ("segment", None, "DIR"): "out",
            ("evaluate", "--n-clusters", "K"): str(CLUSTERS),
            ("evaluate", "--mask-classes", "NAMES"): "background,tissue,lesion",
            ("evaluate", "--json", "OUT"): "report.json",
            ("evaluate", "--csv", "OUT"): "report.csv",
            ("spectra", "--out", "CSV"): "spectra.csv",
            ("spectra", "--n-clusters", "K"): str(CLUSTERS),
            ("demo", "--screenshot", "PNG"): "screenshot.png",
            ("demo", "--train-steps", "N"): "2",
            ("demo", "--checkpoints-before-screenshot", "N"): "1",
            ("demo", "--size", "PX"): "64",
        }
        for key in ((command, option, name), (command, None, name), (None, None, name)):
            if key in fixed:
                return [fixed[key]]
        if name == "RUN":
            if command == "train" and option == "--out":
                return [str(self._new("new-run"))]
            return [str(self.once(f"run:{command}", self.run))]
        if name == "MODEL_FOLDER":
            return [str(self.once("model", self.model_folder))]
        if name == "LABELS":
            return [str(self.once("labels", lambda: write_labels(self.root / "leaf_labels.tif")))]
        if name == "MASK":
            return [str(self.once("mask", lambda: write_mask(self.root / "leaf_mask.png")))]
        if name == "JSON" and option == "--mapping":
            return [str(self.once("mapping", lambda: write_mapping(self.root / "merge.json")))]
        raise KeyError(f"no fixture for placeholder {name} (after {option}) of napari-dgc {command}")


def substitute(tokens: list[str], fixtures: Fixtures) -> list[str]:
    """Replace the placeholders of a variant (``[COMMAND, ...]``) with fixture values."""
    command = tokens[0]
    argv = [command]
    resume_cubes = command == "train" and "--resume" in tokens
    for index, token in enumerate(tokens[1:], start=1):
        if token == "options":  # "[options]": the other options, none needed
            continue
        if token == "CUBE" and resume_cubes:
            # A resumed run trains on its own cubes: CUBE... are those (as they would be moved).
            if "CUBE" not in tokens[1:index]:
                argv.extend(dataset_files(fixtures.template_run))
            continue
        if PLACEHOLDER.match(token):
            previous = tokens[index - 1]
            option = previous if previous.startswith("-") else None
            argv.extend(fixtures.value(command, option, token, tokens))
        else:
            argv.append(token)
    return argv


# ----------------------------------------------------------------------------------------------
# documented inputs that do not exist: create them by the role the parser gives them


def option_value(argv: list[str], option: str) -> int | None:
    for index, token in enumerate(argv[:-1]):
        if token == option:
            return index + 1
    return None


def fast_train(argv: list[str]) -> list[str]:
    """``train`` with :data:`FAST_TRAIN` replacing or adding to the given options."""
    argv = list(argv)
    resume = "--resume" in argv
    known = train_options()
    for option, value in FAST_TRAIN.items():
        if resume and option not in ("--threads",):
            continue  # a resumed run keeps its own settings (--steps N extends it)
        where = option_value(argv, option)
        if where is not None:
            argv[where] = value  # even an option train no longer knows: that is reported
        elif option in known:
            argv += [option, value]
    return argv


def _cluster_count(labels: Path) -> int:
    legends = (
        sorted(labels.glob("*.legend.json"))
        if labels.is_dir()
        else [labels.with_name(labels.name.rsplit(".", 1)[0] + ".legend.json")]
    )
    for legend in legends:
        if legend.is_file():
            return int(json.loads(legend.read_text(encoding="utf-8"))["n_clusters"])
    return CLUSTERS


def prepare(argv: list[str], fixtures: Fixtures, made_by_commands: set[Path]) -> tuple[list[str], list[str]]:
    """Create the missing inputs a command names; expand ``*`` patterns; speed up training.

    An input inside a folder an earlier command of the same block wrote (``labels/x.tif``
    after ``segment --out labels/``) is *not* created: the earlier command should have written
    it. Return the command to run and notes on what was changed.
    """
    from napari_dgc.analysis.masks import mask_stem

    command = argv[0]
    notes: list[str] = []
    cwd = fixtures.root

    def missing(path_text: str) -> Path | None:
        path = cwd / path_text
        if glob.has_magic(path_text):
            return None if glob.glob(str(path)) else path
        if path.exists():
            return None
        if any(parent in made_by_commands for parent in path.parents):
            return None
        return path

    def cube_inputs(patterns: list[str]) -> None:
        for text in patterns:
            path = missing(text)
            if path is None:
                continue
            if glob.has_magic(text):
                for number in (1, 2):
                    write_cube(Path(str(path).replace("*", f"scene{number}")), seed=number)
            else:
                write_cube(path)

    args = subparser(build_parser(), command).parse_intermixed_args(argv[1:])
    if command == "info":
        cube_inputs([args.cube])
    elif command == "train":
        cube_inputs(args.cubes)
        # White and dark references as wide as the cubes: a flat 1.0 and a flat 0.0.
        for key, level in (("prep.white", 1.0), ("prep.dark", 0.0)):
            reference = getattr(args, key, None)
            if reference is not None and missing(reference) is not None:
                write_cube(cwd / reference, cube=np.full((4, COLS, BANDS), level, np.float32))
        if args.resume and missing(args.resume) is not None:
            fixtures.run(cwd / args.resume)
        fast = fast_train(argv)
        changed = [
            f"{option} {fast[i + 1]}"
            for i, option in enumerate(fast[:-1])
            if option in FAST_TRAIN and (i >= len(argv) - 1 or argv[i + 1] != fast[i + 1])
        ]
        if changed:
            notes.append("tiny training: " + " ".join(changed))
        argv = fast
    elif command == "segment":
        inputs = list(args.inputs)
        if args.classes is not None:
            if missing(args.classes) is not None:
                fixtures.model_folder(cwd / args.classes)
        elif inputs:
            run_text = inputs.pop(0)
            if missing(run_text) is not None:
                fixtures.run(cwd / run_text)
            where = option_value(argv, "--checkpoint")
            run_dir = cwd / run_text
            if where is not None and (run_dir / "run.json").is_file():
                known = checkpoint_ids(run_dir)
                if argv[where] not in known and CHECKPOINT_ID.match(argv[where]) and known:
                    notes.append(f"checkpoint {argv[where]} -> {known[-1]} (the tiny run's latest)")
                    argv[where] = known[-1]
        cube_inputs(inputs)
    elif command == "evaluate":
        labels = cwd / args.labels
        if missing(args.labels) is not None:
            if labels.suffix:
                write_labels(labels)
            else:
                write_labels(labels / "leaf_labels.tif")
        mask = cwd / args.mask
        if missing(args.mask) is not None:
            if mask.suffix:
                write_mask(mask)
            else:
                stems = {mask_stem(p) for p in labels.iterdir() if not p.name.endswith(".json")}
                for stem in sorted(stems):
                    write_mask(mask / f"{stem}_mask.png")
        if args.mapping and missing(args.mapping) is not None:
            write_mapping(cwd / args.mapping, _cluster_count(labels))
    expanded: list[str] = []
    for token in argv:
        matches = sorted(glob.glob(token, root_dir=cwd)) if glob.has_magic(token) else []
        expanded.extend(matches or [token])
    return expanded, notes


# ----------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    """What one command line did."""

    argv: list[str]
    code: int | None
    stdout: str
    stderr: str

    def describe(self) -> str:
        """``napari-dgc ARGS -> exit N`` and the last lines of its error output."""
        tail = "\n".join(("    " + line) for line in self.stderr.strip().splitlines()[-6:])
        return f"napari-dgc {shlex.join(self.argv)} -> exit {self.code}\n{tail}"


def run_cli(argv: list[str], cwd: Path) -> Outcome:
    """Run ``napari-dgc ARGV`` in this process in folder ``cwd``; any exception is exit ``None``."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | None = main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # reported with its traceback, as a failure
                traceback.print_exc()
                code = None
    finally:
        os.chdir(previous)
    return Outcome(argv, code, out.getvalue(), err.getvalue())


def needs_cuda(argv: list[str]) -> bool:
    """Whether the command line asks for the CUDA device."""
    where = option_value(argv, "--device")
    return where is not None and argv[where] == "cuda"


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def parses(argv: list[str]) -> str | None:
    """``None`` if the sub-command's parser accepts ``argv``, else the usage error."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            subparser(build_parser(), argv[0]).parse_intermixed_args(argv[1:])
        except SystemExit:
            return err.getvalue().strip()
    return None


__all__ = [
    "SUBCOMMANDS",
    "Fixtures",
    "Outcome",
    "cuda_available",
    "expand_usage",
    "help_usage",
    "needs_cuda",
    "parses",
    "prepare",
    "run_cli",
    "substitute",
    "write_cube",
]
