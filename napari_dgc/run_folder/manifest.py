"""The run manifest ``run.json``: its constants, validation, and the checkpoint entries it lists.

Every reader of a run folder goes through :func:`read_manifest`, which refuses a manifest whose
fields are missing or of the wrong type, naming the file and the field.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc import __version__
from napari_dgc.config import TrainConfig
from napari_dgc.errors import CheckpointError

try:  # advisory locking is POSIX-only; without it concurrent updates rely on atomic replace
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

RUN_FORMAT = "napari-dgc-run"
RUN_FORMAT_VERSION = 1
MANIFEST_NAME = "run.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_TENSOR_FILE = "training.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_ID_PATTERN = re.compile(r"^(start\d+-)?step-\d{6,}$")


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


def checkpoint_id_for(step: int, start: int = 0) -> str:
    """Return the checkpoint id of ``step`` of start ``start`` (``step-000100``,
    ``start1-step-000100``).
    """
    prefix = f"start{int(start)}-" if start else ""
    return f"{prefix}step-{int(step):06d}"


def info_from_entry(entry: dict) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of one ``run.json`` checkpoint entry."""
    return CheckpointInfo(
        entry["id"],
        entry["step"],
        entry["stats"],
        entry.get("start", 0),
        entry.get("run_step", entry["step"]),
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


def dataset_entries(dataset_files: Sequence[str | os.PathLike]) -> list[dict]:
    """Absolute path and size of each training cube, as recorded in ``run.json``."""
    entries = []
    for file in dataset_files:
        path = Path(file).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else None
        entries.append({"path": str(path), "size_bytes": size})
    return entries


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
        "dataset_files": lambda v: (
            isinstance(v, list) and all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in v)
        ),
        "seed": lambda v: isinstance(v, int),
        "created": lambda v: isinstance(v, str),
        "versions": lambda v: isinstance(v, dict),
        "chosen_checkpoint": lambda v: v is None or isinstance(v, str),
        "checkpoints": lambda v: isinstance(v, list) and all(map(valid_entry, v)),
    }
    for key, check in checks.items():
        if key not in manifest or not check(manifest[key]):
            raise CheckpointError(f"{file}: field {key!r} is missing or invalid")
    optional = {  # absent in runs of a single start and runs written before several starts
        "selected_start": lambda v: v is None or isinstance(v, int),
        "start_separations": lambda v: v is None or isinstance(v, list),
    }
    for key, check in optional.items():
        if not check(manifest.get(key)):
            raise CheckpointError(f"{file}: field {key!r} is invalid")
    return manifest


def valid_entry(entry: Any) -> bool:
    """Whether a checkpoint entry has every field, of the right type, and a safe id."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("id"), str)
        and CHECKPOINT_ID_PATTERN.match(entry["id"]) is not None  # ids become paths: no "../"
        and isinstance(entry.get("step"), int)
        and isinstance(entry.get("stats"), dict)
        and isinstance(entry.get("files"), dict)
        and isinstance(entry.get("start", 0), int)
        and isinstance(entry.get("run_step", 0), int)
    )


def parse_config(data: dict, file: Path) -> TrainConfig:
    """The run's :class:`TrainConfig`; CheckpointError naming ``file`` if it is invalid."""
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{file}: invalid training configuration ({error})") from error


def new_manifest(
    path: Path,
    config: TrainConfig,
    n_bands: int,
    wavelengths: Any,
    dataset_files: Sequence[str | os.PathLike],
    seed: int,
) -> dict:
    """The ``run.json`` of a new run (no checkpoints yet); CheckpointError if the arguments disagree."""
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
        "dataset_files": dataset_entries(dataset_files),
        "seed": int(seed),
        "versions": package_versions(),
        "chosen_checkpoint": None,
        "checkpoints": [],
    }


@contextmanager
def manifest_lock(run_path: Path) -> Iterator[None]:
    """Hold the advisory lock of a run's read-modify-write updates of ``run.json``."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(run_path / ".run.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
