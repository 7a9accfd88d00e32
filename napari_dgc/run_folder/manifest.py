"""The run manifest ``run.json``: its constants, validation, and the checkpoint entries it lists.

Every reader of a run folder goes through :func:`read_manifest`, which refuses a manifest whose
fields are missing or of the wrong type, naming the file and the field. A bad checkpoint entry
is the exception: it is set aside (:func:`rejected_entries`) and only that checkpoint is
unusable, so one damaged entry never makes the other checkpoints unreachable;
:func:`write_manifest` keeps it in the file, untouched, for a person to look at.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc import __version__
from napari_dgc.atomic import atomic_write_json
from napari_dgc.config import TrainConfig, drop_retired_settings
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder.validation import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINING_TENSOR_FILE,
    checkpoint_id_for,
    entry_problem,
)

__all__ = ["MODEL_FILE", "OPTIMIZER_FILE", "STATE_FILE", "TRAINING_TENSOR_FILE", "checkpoint_id_for"]

RUN_FORMAT = "napari-dgc-run"
RUN_FORMAT_VERSION = 1
MANIFEST_NAME = "run.json"
CHECKPOINT_DIR = "checkpoints"
#: Key of the entries :func:`read_manifest` set aside; never written to ``run.json``.
_REJECTED = "__rejected__"


@dataclass(frozen=True)
class CheckpointInfo:
    """One listed checkpoint.

    Attributes
    ----------
    checkpoint_id : str
        Folder name under ``RUN/checkpoints``, e.g. ``"step-000100"``.
    step : int
        Optimiser steps done when it was written.
    stats : dict
        JSON statistics from training (losses, active clusters, usage entropy, ...).
    start : int
        The start it belongs to (``TrainConfig.starts.count``; 0 for single-start runs).
    run_step : int
        Steps the run had trained when it was written, all starts together: the position on
        the run's timeline (equal to ``step`` in single-start runs).
    """

    checkpoint_id: str
    step: int
    stats: dict
    start: int = 0
    run_step: int | None = None

    def __post_init__(self) -> None:
        if self.run_step is None:
            object.__setattr__(self, "run_step", self.step)


def info_from_entry(entry: dict) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of one ``run.json`` checkpoint entry."""
    return CheckpointInfo(
        entry["id"],
        entry["step"],
        entry["stats"],
        entry.get("start", 0),
        entry.get("run_step", entry["step"]),
    )


@dataclass(frozen=True)
class Recommendation:
    """The checkpoint training recommends (``run.json`` ``recommended_checkpoint``) and why, in
    words a person reads in the CLI and the timeline.
    """

    checkpoint_id: str
    reason: str


def _valid_recommendation(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and isinstance(value.get("checkpoint_id"), str)
        and isinstance(value.get("reason"), str)
    )


def latest_entry(manifest: dict) -> dict | None:
    """The last checkpoint of the selected start, or of the run while no start is selected."""
    selected = manifest.get("selected_start")
    entries = [
        entry for entry in manifest["checkpoints"] if selected is None or entry.get("start", 0) == selected
    ]
    return entries[-1] if entries else None


def to_json(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays and tuples (for user-supplied stats)."""
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def package_versions() -> dict[str, str]:
    """Versions recorded with a new run (Python, torch, numpy, napari-dgc)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "napari-dgc": __version__,
    }


#: Options of :func:`napari_dgc.io.open_cube` a dataset entry may record: the MATLAB variable
#: (``key``) and the spatial shape of a 2-D MATLAB matrix (``shape``, ``[rows, cols]``).
OPEN_OPTIONS = ("key", "shape")


def dataset_entries(
    dataset_files: Sequence[str | os.PathLike],
    open_options: Sequence[dict | None] | None = None,
) -> list[dict]:
    """Absolute path and size of each training cube, as recorded in ``run.json``.

    Parameters
    ----------
    dataset_files : sequence of path-like
        The training cubes.
    open_options : sequence of dict or None, optional
        Per cube, the :data:`OPEN_OPTIONS` it was opened with (``{"key": "Y", "shape": [95,
        95]}``), recorded so that a resume or ``segment`` reopens it the same way.
    """
    options = list(open_options) if open_options is not None else [None] * len(dataset_files)
    if len(options) != len(dataset_files):
        raise CheckpointError(f"{len(options)} sets of open options for {len(dataset_files)} cubes")
    entries = []
    for file, given in zip(dataset_files, options):
        path = Path(file).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else None
        entry = {"path": str(path), "size_bytes": size}
        for key, value in (given or {}).items():
            if key not in OPEN_OPTIONS:
                raise CheckpointError(f"{path}: {key!r} is not an open option ({', '.join(OPEN_OPTIONS)})")
            if value is not None:
                entry[key] = [int(n) for n in value] if key == "shape" else str(value)
        if not _valid_dataset_entry(entry):
            raise CheckpointError(f"{path}: invalid open options {given!r}")
        entries.append(entry)
    return entries


def _valid_dataset_entry(entry: Any) -> bool:
    """A dataset entry: a ``path``, and optionally a MATLAB ``key`` and a ``[rows, cols]`` shape."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    if "key" in entry and not (isinstance(entry["key"], str) and entry["key"]):
        return False
    if "shape" in entry:
        shape = entry["shape"]
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        ):
            return False
    return True


def open_options_of(entry: dict) -> dict:
    """The :func:`napari_dgc.io.open_cube` keyword arguments a (validated) dataset entry records."""
    options: dict[str, Any] = {}
    if "key" in entry:
        options["key"] = entry["key"]
    if "shape" in entry:
        options["shape"] = tuple(entry["shape"])
    return options


def read_json(file: Path) -> Any:
    """Parsed JSON of ``file``; CheckpointError naming it if missing, unreadable or corrupt."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{file}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: cannot be read ({error})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{file}: corrupt or truncated JSON ({error})") from error
    except RecursionError:  # nesting deeper than any file of ours
        raise CheckpointError(f"{file}: JSON nested too deeply") from None


def read_manifest(file: Path) -> dict:
    """Read and validate ``run.json``; raise :class:`CheckpointError` naming it."""
    manifest = read_json(file)
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{file}: not a napari-dgc run manifest")
    if manifest.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: run format version {manifest.get('format_version')!r} is not supported"
        )
    checks = {
        "config": lambda v: isinstance(v, dict),
        "n_bands": lambda v: isinstance(v, int) and v > 0,
        "wavelengths": lambda v: v is None or (isinstance(v, list) and len(v) == manifest.get("n_bands")),
        "dataset_files": lambda v: isinstance(v, list) and all(_valid_dataset_entry(e) for e in v),
        "seed": lambda v: isinstance(v, int),
        "created": lambda v: isinstance(v, str),
        "versions": lambda v: isinstance(v, dict),
        "chosen_checkpoint": lambda v: v is None or isinstance(v, str),
        "checkpoints": lambda v: isinstance(v, list),
    }
    for key, check in checks.items():
        if key not in manifest or not check(manifest[key]):
            raise CheckpointError(f"{file}: field {key!r} is missing or invalid")
    optional = {  # absent in runs of a single start and runs written before several starts
        "selected_start": lambda v: v is None or isinstance(v, int),
        "start_scores": lambda v: v is None or isinstance(v, list),
        "recommended_checkpoint": _valid_recommendation,  # absent before the first checkpoint
    }
    for key, check in optional.items():
        if not check(manifest.get(key)):
            raise CheckpointError(f"{file}: field {key!r} is invalid")
    _set_aside_bad_entries(manifest)
    return manifest


def _set_aside_bad_entries(manifest: dict) -> None:
    """Keep the usable checkpoint entries in ``manifest["checkpoints"]``; set the others aside.

    An entry is set aside if :func:`~napari_dgc.run_folder.validation.entry_problem` finds
    something wrong or if its id was listed before (two trainings of one run before the run
    lock existed); the first listing of an id is kept.
    """
    kept, rejected, seen = [], [], set()
    for entry in manifest["checkpoints"]:
        problem = entry_problem(entry)
        if problem is None and entry["id"] in seen:
            problem = f"checkpoint {entry['id']!r} is listed twice"
        if problem is None:
            seen.add(entry["id"])
            kept.append(entry)
        else:
            rejected.append((entry, problem))
    manifest["checkpoints"] = kept
    manifest[_REJECTED] = rejected


def rejected_entries(manifest: dict) -> list[str]:
    """Why each checkpoint entry :func:`read_manifest` set aside is unusable (empty if none)."""
    return [problem for _, problem in manifest.get(_REJECTED, [])]


def write_manifest(file: Path, manifest: dict) -> None:
    """Replace ``run.json`` atomically with ``manifest`` (as returned by :func:`read_manifest`).

    The entries set aside are written back unchanged after the usable ones: an update never
    destroys what a person may still want to repair.
    """
    data = {key: value for key, value in manifest.items() if key != _REJECTED}
    data["checkpoints"] = [*manifest["checkpoints"], *(entry for entry, _ in manifest.get(_REJECTED, []))]
    atomic_write_json(file, data)


def parse_config(data: dict, file: Path) -> TrainConfig:
    """The run's :class:`TrainConfig`; CheckpointError naming ``file`` if it is invalid."""
    try:
        return TrainConfig.from_dict(drop_retired_settings(data))
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{file}: invalid training configuration ({error})") from error


def new_manifest(
    path: Path,
    config: TrainConfig,
    n_bands: int,
    wavelengths: Any,
    dataset_files: Sequence[str | os.PathLike],
    seed: int,
    open_options: Sequence[dict | None] | None = None,
) -> dict:
    """The ``run.json`` of a new run (no checkpoints yet); CheckpointError if the arguments disagree.

    ``open_options`` are recorded with the dataset entries (see :func:`dataset_entries`).
    """
    n_bands = int(n_bands)
    if n_bands < 1:
        raise CheckpointError(f"{path}: n_bands must be positive, got {n_bands}")
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
        if wavelengths.size != n_bands:
            raise CheckpointError(f"{path}: {wavelengths.size} wavelengths given for {n_bands} bands")
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_json(config.to_dict()),
        "n_bands": n_bands,
        "wavelengths": None if wavelengths is None else wavelengths.tolist(),
        "dataset_files": dataset_entries(dataset_files, open_options),
        "seed": int(seed),
        "versions": package_versions(),
        "chosen_checkpoint": None,
        "checkpoints": [],
    }
