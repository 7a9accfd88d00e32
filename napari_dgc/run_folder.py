"""Run folders: the configuration, data provenance and checkpoints of one training run.

Layout::

    RUN/run.json                                  manifest (see below), replaced atomically
    RUN/checkpoints/step-000100/model.safetensors model weights and buffers
    RUN/checkpoints/step-000100/optimizer.safetensors  optimizer tensors (flattened)
    RUN/checkpoints/step-000100/state.json        step, stats, optimizer structure, training state
    RUN/checkpoints/step-000100/training.safetensors   tensors of the training state (if any)
    RUN/checkpoints/start1-step-000100/...        the same for start 1 of a run with several starts

``run.json`` holds the training configuration, band count, wavelengths, dataset files with
their sizes, seed, package versions, creation time, the chosen checkpoint, the selected start
(runs with several starts, ``TrainConfig.starts.count``) and the list of checkpoints in training
order with the SHA-256 of each of their files. A checkpoint is added to that list only

after all its files are on disk, and ``run.json`` is replaced atomically, so a process killed at
any moment (or a full disk) leaves every listed checkpoint loadable, and a reader (the GUI
timeline) sees either the old or the new list, never a partial file. Read-modify-write updates
of ``run.json`` (a new checkpoint from training, the chosen checkpoint from the GUI) hold an
advisory lock on ``RUN/.run.lock`` where the platform has ``fcntl``.

Nothing here unpickles: tensors are read with safetensors, everything else is JSON.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from napari_dgc import __version__, atomic
from napari_dgc.config import TrainConfig
from napari_dgc.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from napari_dgc.model.network import DGCModel

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
_CHECKPOINT_ID = re.compile(r"^(start\d+-)?step-\d{6,}$")


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
    ``start1-step-000100``)."""
    prefix = f"start{int(start)}-" if start else ""
    return f"{prefix}step-{int(step):06d}"


def _info(entry: dict) -> CheckpointInfo:
    return CheckpointInfo(entry["id"], entry["step"], entry["stats"], entry.get("start", 0),
                          entry.get("run_step", entry["step"]))


def _latest_entry(manifest: dict) -> dict | None:
    """The last checkpoint of the selected start, or of the run while no start is selected."""
    selected = manifest.get("selected_start")
    entries = [entry for entry in manifest["checkpoints"]
               if selected is None or entry.get("start", 0) == selected]
    return entries[-1] if entries else None


def _to_json(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays and tuples (for user-supplied stats)."""
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _encode(value: Any, name: str, tensors: dict[str, "torch.Tensor"]) -> Any:
    """Turn a nested structure into JSON, moving tensors into ``tensors`` under path names.

    Tensors become ``{"__tensor__": name}``, tuples ``{"__tuple__": [...]}`` and dicts with
    non-string keys (optimizer states are keyed by int) ``{"__items__": [[key, value], ...]}``,
    so :func:`_decode` restores the exact structure ``optimizer.load_state_dict`` expects.
    """
    import torch

    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _encode(item, f"{name}.{key}", tensors) for key, item in value.items()}
        items = [
            [_encode(key, f"{name}.key{index}", tensors), _encode(item, f"{name}.{key}", tensors)]
            for index, (key, item) in enumerate(value.items())
        ]
        return {"__items__": items}
    if isinstance(value, tuple):
        items = [_encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {"__tuple__": items}
    if isinstance(value, list):
        return [_encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, (np.generic, np.ndarray)):
        return _to_json(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {name!r} in a checkpoint")


def _decode(value: Any, tensors: dict[str, "torch.Tensor"], source: Path) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors, source) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        try:
            return tensors[value["__tensor__"]]
        except KeyError:
            raise CheckpointError(
                f"{source}: tensor {value['__tensor__']!r} is missing; the checkpoint is corrupt"
            ) from None
    if set(value) == {"__tuple__"}:
        return tuple(_decode(item, tensors, source) for item in value["__tuple__"])
    if set(value) == {"__items__"}:
        return {
            _decode(key, tensors, source): _decode(item, tensors, source)
            for key, item in value["__items__"]
        }
    return {key: _decode(item, tensors, source) for key, item in value.items()}


def _package_versions() -> dict[str, str]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "napari-dgc": __version__,
    }


def _dataset_entries(dataset_files: Sequence[str | os.PathLike]) -> list[dict]:
    entries = []
    for file in dataset_files:
        path = Path(file).expanduser().resolve()
        size = path.stat().st_size if path.is_file() else None
        entries.append({"path": str(path), "size_bytes": size})
    return entries


class RunDirectory:
    """A training run folder (see the module docstring for the layout).

    Use :meth:`create` for a new run and :meth:`open` for an existing one; the constructor is
    internal. ``config``, ``n_bands``, ``wavelengths``, ``dataset_files`` and ``seed`` are fixed
    at creation; :meth:`checkpoints` and :attr:`chosen_checkpoint` re-read ``run.json`` so they
    follow a run that is still training.
    """

    def __init__(self, path: Path, manifest: dict, config: TrainConfig) -> None:
        self.path = path
        self.config = config
        self.n_bands: int = manifest["n_bands"]
        wavelengths = manifest["wavelengths"]
        self.wavelengths: np.ndarray | None = (
            None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
        )
        self.dataset_files: list[str] = [entry["path"] for entry in manifest["dataset_files"]]
        self.seed: int = manifest["seed"]
        self.created: str = manifest["created"]
        self.versions: dict = manifest["versions"]

    # ------------------------------------------------------------------ creation / opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        config: TrainConfig,
        n_bands: int,
        wavelengths: np.ndarray | Sequence[float] | None,
        dataset_files: Sequence[str | os.PathLike],
        seed: int,
    ) -> "RunDirectory":
        """Start a new run folder and write its ``run.json``.

        The folder may not exist yet or be empty of runs. A folder that already holds a
        ``run.json`` is never overwritten: to continue a run, :meth:`open` it and resume from
        :meth:`latest_checkpoint` (:meth:`ensure_compatible` checks the settings).

        Parameters
        ----------
        path : path-like
            The run folder.
        config : TrainConfig
            Training configuration (stored with ``config.to_dict()``).
        n_bands : int
            Bands of the training cubes (the model's input size).
        wavelengths : array-like or None
            Band centres in nm, ``n_bands`` values, or ``None`` when unknown.
        dataset_files : sequence of path-like
            Training cubes; their absolute paths and sizes are recorded.
        seed : int
            Random seed of the run.

        Raises
        ------
        CheckpointError
            If the folder already holds a run, ``path`` is a file, or the arguments disagree.
        """
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST_NAME
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: is a file, not a run folder")
        if manifest_path.exists():
            raise CheckpointError(
                f"{manifest_path}: a run already exists here; open it to resume or choose "
                "another folder"
            )
        n_bands = int(n_bands)
        if n_bands < 1:
            raise CheckpointError(f"{path}: n_bands must be positive, got {n_bands}")
        if wavelengths is not None:
            wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
            if wavelengths.size != n_bands:
                raise CheckpointError(
                    f"{path}: {wavelengths.size} wavelengths given for {n_bands} bands"
                )
        manifest = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": _to_json(config.to_dict()),
            "n_bands": n_bands,
            "wavelengths": None if wavelengths is None else wavelengths.tolist(),
            "dataset_files": _dataset_entries(dataset_files),
            "seed": int(seed),
            "versions": _package_versions(),
            "chosen_checkpoint": None,
            "checkpoints": [],
        }
        path.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write_json(manifest_path, manifest)
        return cls(path, manifest, config)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDirectory":
        """Open an existing run folder (or its ``run.json``), validating the manifest.

        Raises
        ------
        CheckpointError
            If ``run.json`` is missing, unreadable, truncated or inconsistent.
        """
        path = Path(path).expanduser()
        if path.name == MANIFEST_NAME and path.is_file():
            path = path.parent
        manifest = _read_manifest(path / MANIFEST_NAME)
        return cls(path, manifest, _parse_config(manifest["config"], path / MANIFEST_NAME))

    def ensure_compatible(self, config: TrainConfig, n_bands: int) -> None:
        """Check that training with ``config`` on ``n_bands`` bands may resume this run.

        The model configuration and band count must equal the run's; other settings (e.g. more
        steps) may differ.

        Raises
        ------
        CheckpointError
            Naming the first difference.
        """
        if int(n_bands) != self.n_bands:
            raise CheckpointError(
                f"{self.manifest_path}: the run was trained on {self.n_bands} bands, "
                f"not {n_bands}"
            )
        if config.model.to_dict() != self.config.model.to_dict():
            raise CheckpointError(
                f"{self.manifest_path}: the model settings differ from the run's "
                f"({self.config.model.to_dict()})"
            )

    # ------------------------------------------------------------------ listing

    @property
    def manifest_path(self) -> Path:
        """Path of ``run.json``."""
        return self.path / MANIFEST_NAME

    def checkpoints(self, start: int | None = None) -> list[CheckpointInfo]:
        """Listed checkpoints in training order (re-reads ``run.json``, so a live run is seen
        growing); only those of start ``start`` if given."""
        return [
            _info(entry) for entry in _read_manifest(self.manifest_path)["checkpoints"]
            if start is None or entry.get("start", 0) == start
        ]

    def latest_checkpoint(self) -> CheckpointInfo | None:
        """The selected start's last checkpoint (:attr:`selected_start`), or while no start is
        selected the last one written; ``None`` before the first one."""
        entry = _latest_entry(_read_manifest(self.manifest_path))
        return None if entry is None else _info(entry)

    @property
    def selected_start(self) -> int | None:
        """The start that continued after the selection (:meth:`record_selection`), or
        ``None`` (a single-start run, or a run still training its starts)."""
        return _read_manifest(self.manifest_path).get("selected_start")

    @property
    def start_separations(self) -> list[float] | None:
        """Each start's score at the selection (:meth:`record_selection`), or ``None``."""
        return _read_manifest(self.manifest_path).get("start_separations")

    @property
    def chosen_checkpoint(self) -> str | None:
        """Id of the checkpoint a person chose (:meth:`choose`), or ``None``."""
        return _read_manifest(self.manifest_path)["chosen_checkpoint"]

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        """Folder of a listed checkpoint.

        Raises
        ------
        CheckpointError
            If the run lists no checkpoint of that id.
        """
        self._entry(_read_manifest(self.manifest_path), checkpoint_id)
        return self.path / CHECKPOINT_DIR / checkpoint_id

    def _entry(self, manifest: dict, checkpoint_id: str) -> dict:
        for entry in manifest["checkpoints"]:
            if entry["id"] == checkpoint_id:
                return entry
        known = ", ".join(entry["id"] for entry in manifest["checkpoints"]) or "none"
        raise CheckpointError(
            f"{self.manifest_path}: no checkpoint {checkpoint_id!r} (listed: {known})"
        )

    # ------------------------------------------------------------------ writing

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        with open(self.path / ".run.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def save_checkpoint(
        self,
        step: int,
        model_state: dict[str, "torch.Tensor"],
        optimizer_state: dict,
        training_state: dict,
        stats: dict,
        *,
        start: int = 0,
        run_step: int | None = None,
    ) -> CheckpointInfo:
        """Write a checkpoint, then list it in ``run.json``.

        Parameters
        ----------
        step : int
            Optimiser steps done by the model; with ``start`` gives the id
            (:func:`checkpoint_id_for`).
        model_state : dict of str to Tensor
            ``model.state_dict()``.
        optimizer_state : dict
            ``optimizer.state_dict()``; tensors are stored flat in safetensors and the nesting
            in JSON, so :meth:`load_checkpoint_state` returns the same structure.
        training_state : dict
            JSON-serialisable state needed to resume (RNG states, sampler position, ...);
            tensors anywhere inside it (e.g. under ``"tensors"``) are stored in safetensors.
        stats : dict
            JSON statistics shown in the timeline (losses, active clusters, usage entropy ...).
        start : int
            The start the model belongs to (``TrainConfig.starts.count``).
        run_step : int, optional
            Steps the run has trained, all starts together (default ``step``); orders the list.

        Returns
        -------
        CheckpointInfo

        Raises
        ------
        CheckpointError
            If the id is already listed, or a file cannot be written (e.g. the disk is full);
            in that case the run folder still lists only complete checkpoints.
        """
        checkpoint_id = checkpoint_id_for(step, start)
        run_step = int(step if run_step is None else run_step)
        if any(info.checkpoint_id == checkpoint_id for info in self.checkpoints()):
            raise CheckpointError(
                f"{self.manifest_path}: checkpoint {checkpoint_id} already exists"
            )
        folder = self.path / CHECKPOINT_DIR / checkpoint_id
        optimizer_tensors: dict[str, torch.Tensor] = {}
        training_tensors: dict[str, torch.Tensor] = {}
        state = {
            "step": int(step),
            "stats": _to_json(stats),
            "optimizer": _encode(optimizer_state, "optimizer", optimizer_tensors),
            "training": _encode(training_state, "training", training_tensors),
        }
        files = {MODEL_FILE: model_state, OPTIMIZER_FILE: optimizer_tensors}
        if training_tensors:
            files[TRAINING_TENSOR_FILE] = training_tensors
        metadata = {
            "format": "napari-dgc-model",
            "n_bands": str(self.n_bands),
            "model_config": json.dumps(_to_json(self.config.model.to_dict())),
            "step": str(int(step)),
        }
        try:
            for name, tensors in files.items():
                atomic.atomic_save_safetensors(
                    folder / name, tensors, metadata if name == MODEL_FILE else None
                )
            atomic.atomic_write_json(folder / STATE_FILE, state)
            names = [*files, STATE_FILE]
            digests = {name: atomic.file_sha256(folder / name) for name in names}
            entry = {"id": checkpoint_id, "step": int(step), "stats": state["stats"],
                     "files": digests, "start": int(start), "run_step": run_step}
            with self._locked():
                manifest = _read_manifest(self.manifest_path)
                manifest["checkpoints"] = sorted(
                    [*manifest["checkpoints"], entry],
                    key=lambda item: item.get("run_step", item["step"]),
                )
                atomic.atomic_write_json(self.manifest_path, manifest)
        except OSError as error:
            # Not listed, so nothing refers to the partial folder: free its space.
            shutil.rmtree(folder, ignore_errors=True)
            raise CheckpointError(
                f"{folder}: could not write checkpoint {checkpoint_id}: {error.strerror or error}"
            ) from error
        return _info(entry)

    def record_selection(self, start: int, separations: Sequence[float]) -> None:
        """Record in ``run.json`` (atomically) that start ``start`` continues after the
        selection, and every start's score; from then on :meth:`latest_checkpoint` follows it.

        Raises
        ------
        CheckpointError
            If ``start`` has no checkpoint.
        """
        with self._locked():
            manifest = _read_manifest(self.manifest_path)
            if not any(entry.get("start", 0) == start for entry in manifest["checkpoints"]):
                raise CheckpointError(f"{self.manifest_path}: start {start} has no checkpoint")
            manifest["selected_start"] = int(start)
            manifest["start_separations"] = [float(value) for value in separations]
            atomic.atomic_write_json(self.manifest_path, manifest)

    def choose(self, checkpoint_id: str) -> None:
        """Record ``checkpoint_id`` as the chosen checkpoint in ``run.json`` (atomically).

        Raises
        ------
        CheckpointError
            If the run lists no such checkpoint.
        """
        with self._locked():
            manifest = _read_manifest(self.manifest_path)
            self._entry(manifest, checkpoint_id)
            manifest["chosen_checkpoint"] = checkpoint_id
            atomic.atomic_write_json(self.manifest_path, manifest)

    # ------------------------------------------------------------------ loading

    def _verified_file(self, entry: dict, name: str) -> Path:
        file = self.path / CHECKPOINT_DIR / entry["id"] / name
        if not file.is_file():
            raise CheckpointError(f"{file}: checkpoint file is missing")
        expected = entry["files"].get(name)
        if expected is not None and atomic.file_sha256(file) != expected:
            raise CheckpointError(f"{file}: checksum mismatch, the file is corrupt or truncated")
        return file

    def _load_tensors(self, entry: dict, name: str) -> tuple[dict, dict[str, str]]:
        from safetensors import SafetensorError, safe_open

        file = self._verified_file(entry, name)
        try:
            with safe_open(file, framework="pt", device="cpu") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                return tensors, handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error

    def _resolve(self, checkpoint_id: str | None) -> dict:
        manifest = _read_manifest(self.manifest_path)
        if checkpoint_id is None:
            checkpoint_id = manifest["chosen_checkpoint"]
        if checkpoint_id is None:
            latest = _latest_entry(manifest)
            if latest is None:
                raise CheckpointError(f"{self.manifest_path}: the run has no checkpoints yet")
            return latest
        return self._entry(manifest, checkpoint_id)

    def load_checkpoint_state(self, checkpoint_id: str) -> tuple[dict, dict, dict]:
        """Read everything needed to resume training from a checkpoint.

        Returns
        -------
        model_state : dict of str to Tensor
        optimizer_state : dict
            Ready for ``optimizer.load_state_dict``.
        training_state : dict
            As saved, tensors restored.

        Raises
        ------
        CheckpointError
            If the checkpoint is not listed or one of its files is missing or corrupt.
        """
        entry = self._entry(_read_manifest(self.manifest_path), checkpoint_id)
        model_state, _ = self._load_tensors(entry, MODEL_FILE)
        optimizer_tensors, _ = self._load_tensors(entry, OPTIMIZER_FILE)
        training_tensors = (
            self._load_tensors(entry, TRAINING_TENSOR_FILE)[0]
            if TRAINING_TENSOR_FILE in entry["files"]
            else {}
        )
        state_file = self._verified_file(entry, STATE_FILE)
        state = _read_json(state_file)
        if not isinstance(state, dict) or not {"optimizer", "training"} <= state.keys():
            raise CheckpointError(f"{state_file}: optimizer or training state is missing")
        return (
            model_state,
            _decode(state["optimizer"], optimizer_tensors, state_file),
            _decode(state["training"], training_tensors, state_file),
        )

    def load_model(self, checkpoint_id: str | None = None, device: str = "cpu") -> "DGCModel":
        """Build the model of a checkpoint in evaluation mode.

        Parameters
        ----------
        checkpoint_id : str, optional
            Default: the chosen checkpoint, else the latest.
        device : str
            Torch device for the model.

        Raises
        ------
        CheckpointError
            If there is no such checkpoint, its file is corrupt, or its tensors do not fit the
            run's band count and model configuration.
        """
        from napari_dgc.model.network import DGCModel

        entry = self._resolve(checkpoint_id)
        model_state, metadata = self._load_tensors(entry, MODEL_FILE)
        file = self.path / CHECKPOINT_DIR / entry["id"] / MODEL_FILE
        if metadata.get("n_bands") not in (None, str(self.n_bands)):
            raise CheckpointError(
                f"{file}: weights for {metadata['n_bands']} bands, but the run has {self.n_bands}"
            )
        model = DGCModel(self.n_bands, self.config.model)
        expected = model.state_dict()
        missing = sorted(expected.keys() - model_state.keys())
        unexpected = sorted(model_state.keys() - expected.keys())
        if missing or unexpected:
            raise CheckpointError(
                f"{file}: tensors do not match the model (missing {missing}, unexpected "
                f"{unexpected})"
            )
        for name, tensor in expected.items():
            if tuple(model_state[name].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{file}: tensor {name} has shape {tuple(model_state[name].shape)}, the "
                    f"run's configuration needs {tuple(tensor.shape)}"
                )
        model.load_state_dict(model_state)
        return model.to(device).eval()


def _read_json(file: Path) -> Any:
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


def _read_manifest(file: Path) -> dict:
    """Read and validate ``run.json``; raise :class:`CheckpointError` naming it."""
    manifest = _read_json(file)
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{file}: not a napari-dgc run manifest")
    if manifest.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: run format version {manifest.get('format_version')!r} is not supported"
        )
    checks = {
        "config": lambda v: isinstance(v, dict),
        "n_bands": lambda v: isinstance(v, int) and v > 0,
        "wavelengths": lambda v: v is None
        or (isinstance(v, list) and len(v) == manifest.get("n_bands")),
        "dataset_files": lambda v: isinstance(v, list)
        and all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in v),
        "seed": lambda v: isinstance(v, int),
        "created": lambda v: isinstance(v, str),
        "versions": lambda v: isinstance(v, dict),
        "chosen_checkpoint": lambda v: v is None or isinstance(v, str),
        "checkpoints": lambda v: isinstance(v, list) and all(map(_valid_entry, v)),
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


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("id"), str)
        and _CHECKPOINT_ID.match(entry["id"]) is not None  # ids become paths: no "../"
        and isinstance(entry.get("step"), int)
        and isinstance(entry.get("stats"), dict)
        and isinstance(entry.get("files"), dict)
        and isinstance(entry.get("start", 0), int)
        and isinstance(entry.get("run_step", 0), int)
    )


def _parse_config(data: dict, file: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{file}: invalid training configuration ({error})") from error
