"""The :class:`RunDirectory`: create, open, list, write and load the checkpoints of one run."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc import atomic
from napari_dgc.config import TrainConfig
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder.checkpoint_files import (
    check_model_tensors,
    load_tensors,
    read_checkpoint_state,
    verified_file,
    write_checkpoint_files,
)
from napari_dgc.run_folder.manifest import (
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    MODEL_FILE,
    CheckpointInfo,
    checkpoint_id_for,
    info_from_entry,
    latest_entry,
    manifest_lock,
    new_manifest,
    parse_config,
    read_manifest,
    to_json,
)

if TYPE_CHECKING:
    import torch

    from napari_dgc.model.network import DGCModel


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
    ) -> RunDirectory:
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
                f"{manifest_path}: a run already exists here; open it to resume or choose another folder"
            )
        manifest = new_manifest(path, config, n_bands, wavelengths, dataset_files, seed)
        path.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write_json(manifest_path, manifest)
        return cls(path, manifest, config)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDirectory:
        """Open an existing run folder (or its ``run.json``), validating the manifest.

        Raises
        ------
        CheckpointError
            If ``run.json`` is missing, unreadable, truncated or inconsistent.
        """
        path = Path(path).expanduser()
        if path.name == MANIFEST_NAME and path.is_file():
            path = path.parent
        manifest = read_manifest(path / MANIFEST_NAME)
        return cls(path, manifest, parse_config(manifest["config"], path / MANIFEST_NAME))

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
                f"{self.manifest_path}: the run was trained on {self.n_bands} bands, not {n_bands}"
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
        growing); only those of start ``start`` if given.
        """
        return [
            info_from_entry(entry)
            for entry in read_manifest(self.manifest_path)["checkpoints"]
            if start is None or entry.get("start", 0) == start
        ]

    def latest_checkpoint(self) -> CheckpointInfo | None:
        """The selected start's last checkpoint (:attr:`selected_start`), or while no start is
        selected the last one written; ``None`` before the first one.
        """
        entry = latest_entry(read_manifest(self.manifest_path))
        return None if entry is None else info_from_entry(entry)

    @property
    def selected_start(self) -> int | None:
        """The start that continued after the selection (:meth:`record_selection`), or
        ``None`` (a single-start run, or a run still training its starts).
        """
        return read_manifest(self.manifest_path).get("selected_start")

    @property
    def start_separations(self) -> list[float] | None:
        """Each start's score at the selection (:meth:`record_selection`), or ``None``."""
        return read_manifest(self.manifest_path).get("start_separations")

    @property
    def chosen_checkpoint(self) -> str | None:
        """Id of the checkpoint a person chose (:meth:`choose`), or ``None``."""
        return read_manifest(self.manifest_path)["chosen_checkpoint"]

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        """Folder of a listed checkpoint.

        Raises
        ------
        CheckpointError
            If the run lists no checkpoint of that id.
        """
        self._entry(read_manifest(self.manifest_path), checkpoint_id)
        return self.path / CHECKPOINT_DIR / checkpoint_id

    def _entry(self, manifest: dict, checkpoint_id: str) -> dict:
        for entry in manifest["checkpoints"]:
            if entry["id"] == checkpoint_id:
                return entry
        known = ", ".join(entry["id"] for entry in manifest["checkpoints"]) or "none"
        raise CheckpointError(f"{self.manifest_path}: no checkpoint {checkpoint_id!r} (listed: {known})")

    # ------------------------------------------------------------------ writing

    def _locked(self):
        return manifest_lock(self.path)

    def save_checkpoint(
        self,
        step: int,
        model_state: dict[str, torch.Tensor],
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
            raise CheckpointError(f"{self.manifest_path}: checkpoint {checkpoint_id} already exists")
        folder = self.path / CHECKPOINT_DIR / checkpoint_id
        metadata = {
            "format": "napari-dgc-model",
            "n_bands": str(self.n_bands),
            "model_config": json.dumps(to_json(self.config.model.to_dict())),
            "step": str(int(step)),
        }
        try:
            stored_stats, digests = write_checkpoint_files(
                folder, step, model_state, optimizer_state, training_state, stats, metadata
            )
            entry = {
                "id": checkpoint_id,
                "step": int(step),
                "stats": stored_stats,
                "files": digests,
                "start": int(start),
                "run_step": run_step,
            }
            with self._locked():
                manifest = read_manifest(self.manifest_path)
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
        return info_from_entry(entry)

    def record_selection(self, start: int, separations: Sequence[float]) -> None:
        """Record in ``run.json`` (atomically) that start ``start`` continues after the
        selection, and every start's score; from then on :meth:`latest_checkpoint` follows it.

        Raises
        ------
        CheckpointError
            If ``start`` has no checkpoint.
        """
        with self._locked():
            manifest = read_manifest(self.manifest_path)
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
            manifest = read_manifest(self.manifest_path)
            self._entry(manifest, checkpoint_id)
            manifest["chosen_checkpoint"] = checkpoint_id
            atomic.atomic_write_json(self.manifest_path, manifest)

    # ------------------------------------------------------------------ loading

    def _resolve(self, checkpoint_id: str | None) -> dict:
        manifest = read_manifest(self.manifest_path)
        if checkpoint_id is None:
            checkpoint_id = manifest["chosen_checkpoint"]
        if checkpoint_id is None:
            latest = latest_entry(manifest)
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
        entry = self._entry(read_manifest(self.manifest_path), checkpoint_id)
        return read_checkpoint_state(self.path / CHECKPOINT_DIR / entry["id"], entry["files"])

    def load_model(self, checkpoint_id: str | None = None, device: str = "cpu") -> DGCModel:
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
        file = self.path / CHECKPOINT_DIR / entry["id"] / MODEL_FILE
        model_state, metadata = load_tensors(verified_file(file, entry["files"].get(MODEL_FILE)))
        if metadata.get("n_bands") not in (None, str(self.n_bands)):
            raise CheckpointError(
                f"{file}: weights for {metadata['n_bands']} bands, but the run has {self.n_bands}"
            )
        model = DGCModel(self.n_bands, self.config.model)
        check_model_tensors(file, model.state_dict(), model_state)
        model.load_state_dict(model_state)
        return model.to(device).eval()
