"""The :class:`RunDirectory`: create, open, list, write and load the checkpoints of one run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.config import TrainConfig
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder.checkpoint_files import (
    read_checkpoint_state,
    read_model_weights,
)
from napari_dgc.run_folder.lock import LockHolder, RunLock, manifest_lock, run_lock_holder
from napari_dgc.run_folder.manifest import (
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    CheckpointInfo,
    Recommendation,
    info_from_entry,
    latest_entry,
    new_manifest,
    open_options_of,
    parse_config,
    read_manifest,
    rejected_entries,
    write_manifest,
)
from napari_dgc.run_folder.paths import inside_run
from napari_dgc.run_folder.validation import check_step
from napari_dgc.run_folder.writing import create_locked, lock_for_writing, write_checkpoint

if TYPE_CHECKING:
    import torch

    from napari_dgc.model.network import DGCModel


class RunDirectory:
    """A training run folder (see the module docstring for the layout).

    Use :meth:`create` for a new run and :meth:`open` for an existing one; the constructor is
    internal. ``config``, ``n_bands``, ``wavelengths``, ``dataset_files`` and ``seed`` are fixed
    at creation; :meth:`checkpoints` and :attr:`chosen_checkpoint` re-read ``run.json`` so they
    follow a run that is still training.

    A writer holds the run's lock for its lifetime (:meth:`create` / :meth:`open` with
    ``lock=True``, released by :meth:`release`); :meth:`holder` tells anyone whether the run is
    busy and with whom.
    """

    def __init__(self, path: Path, manifest: dict, config: TrainConfig, lock: RunLock | None = None) -> None:
        self.path = path
        self._lock = lock
        self.config = config
        self.n_bands: int = manifest["n_bands"]
        wavelengths = manifest["wavelengths"]
        self.wavelengths: np.ndarray | None = (
            None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
        )
        self.dataset_files: list[str] = [entry["path"] for entry in manifest["dataset_files"]]
        #: Per dataset file, the ``open_cube`` options it was trained with (``key``, ``shape``).
        self.dataset_open_options: list[dict] = [
            open_options_of(entry) for entry in manifest["dataset_files"]
        ]
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
        *,
        lock: bool = False,
        open_options: Sequence[dict | None] | None = None,
    ) -> RunDirectory:
        """Start a new run folder and write its ``run.json``, holding the run lock meanwhile.

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
        lock : bool
            Keep holding the run lock (training does, until :meth:`release`).
        open_options : sequence of dict or None, optional
            Per dataset file, the :func:`napari_dgc.io.open_cube` options it was opened with
            (MATLAB ``key``, 2-D matrix ``shape``), recorded so that it is reopened the same way
            (:attr:`dataset_open_options`).

        Raises
        ------
        CheckpointError
            If the folder already holds a run or is busy, ``path`` is a file, the arguments
            disagree, or it cannot be written (a full disk: nothing is left behind).
        """
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: is a file, not a run folder")
        manifest = new_manifest(path, config, n_bands, wavelengths, dataset_files, seed, open_options)
        held = create_locked(path, manifest, "trained")
        if not lock:
            held.release()
        return cls(path, manifest, config, held if lock else None)

    @classmethod
    def open(cls, path: str | os.PathLike, *, lock: bool = False) -> RunDirectory:
        """Open an existing run folder (or its ``run.json``), validating the manifest.

        Parameters
        ----------
        path : path-like
            The run folder or its ``run.json``.
        lock : bool
            Open it for writing: take the run lock *before* reading anything (held until
            :meth:`release`) and remove the temporary files a killed writer left.

        Raises
        ------
        CheckpointError
            If ``run.json`` is missing, unreadable, truncated or inconsistent; with ``lock``,
            if the run is busy ("run RUN is busy: trained by pid ... on host ... since ...").
        """
        path = Path(path).expanduser()
        if path.name == MANIFEST_NAME and path.is_file():
            path = path.parent
        held = lock_for_writing(path, "trained") if lock else None
        try:
            manifest = read_manifest(path / MANIFEST_NAME)
            return cls(path, manifest, parse_config(manifest["config"], path / MANIFEST_NAME), held)
        except BaseException:
            if held is not None:
                held.release()
            raise

    def release(self) -> None:
        """Release the run lock this object holds (nothing if it holds none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def holder(self) -> LockHolder | None:
        """Who is writing this run now (training or resuming it), or ``None``.

        For a GUI to say "busy" before it tries: ``holder().describe()`` reads e.g.
        ``"trained by pid 1234 on host lab-3 since 2024-05-01T10:00:00+00:00"``. It is a
        snapshot: a writer may start or end right after.
        """
        return run_lock_holder(self.path)

    def is_busy(self) -> bool:
        """Whether another writer holds the run lock now (see :meth:`holder`); ``False`` when
        this object holds it itself.
        """
        return self._lock is None and self.holder() is not None

    def rejected_checkpoints(self) -> list[str]:
        """Why each unusable ``run.json`` checkpoint entry is unusable (they are not listed by
        :meth:`checkpoints`; the others stay usable). Empty for a healthy run.
        """
        return rejected_entries(read_manifest(self.manifest_path))

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
    def start_scores(self) -> list[float] | None:
        """Each start's score at the selection (:meth:`record_selection`), or ``None``."""
        return read_manifest(self.manifest_path).get("start_scores")

    @property
    def chosen_checkpoint(self) -> str | None:
        """Id of the checkpoint a person chose (:meth:`choose`), or ``None``."""
        return read_manifest(self.manifest_path)["chosen_checkpoint"]

    @property
    def recommended_checkpoint(self) -> Recommendation | None:
        """The checkpoint training recommends (:meth:`recommend`), or ``None``."""
        value = read_manifest(self.manifest_path).get("recommended_checkpoint")
        return None if value is None else Recommendation(value["checkpoint_id"], value["reason"])

    def default_checkpoint(self) -> tuple[CheckpointInfo, str] | None:
        """The checkpoint used when none is named, and why: the one a person chose, else the
        one training recommends, else the latest; ``None`` before the first checkpoint.

        Raises
        ------
        CheckpointError
            If the chosen checkpoint is no longer listed.
        """
        manifest = read_manifest(self.manifest_path)
        if manifest["chosen_checkpoint"] is not None:  # a chosen one that is gone is an error
            return info_from_entry(self._entry(manifest, manifest["chosen_checkpoint"])), "chosen by a person"
        listed = {entry["id"]: entry for entry in manifest["checkpoints"]}
        recommended = manifest.get("recommended_checkpoint")
        if recommended is not None and recommended["checkpoint_id"] in listed:
            return info_from_entry(
                listed[recommended["checkpoint_id"]]
            ), f"recommended: {recommended['reason']}"
        latest = latest_entry(manifest)
        return None if latest is None else (info_from_entry(latest), "the latest checkpoint")

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        """Folder of a listed checkpoint.

        Raises
        ------
        CheckpointError
            If the run lists no checkpoint of that id.
        """
        self._entry(read_manifest(self.manifest_path), checkpoint_id)
        return inside_run(self.path, self.path / CHECKPOINT_DIR / checkpoint_id, "read")

    def _entry(self, manifest: dict, checkpoint_id: str) -> dict:
        for entry in manifest["checkpoints"]:
            if entry["id"] == checkpoint_id:
                return entry
        known = ", ".join(entry["id"] for entry in manifest["checkpoints"]) or "none"
        unusable = [problem for problem in rejected_entries(manifest) if repr(checkpoint_id) in problem]
        reason = f"; {unusable[0]}" if unusable else ""
        raise CheckpointError(
            f"{self.manifest_path}: no checkpoint {checkpoint_id!r} (listed: {known}){reason}"
        )

    # ------------------------------------------------------------------ writing

    def _locked(self):
        return manifest_lock(self.path)

    def _writing(self) -> RunLock | None:
        """The run lock taken for one write by an object that does not hold it for its lifetime."""
        return None if self._lock is not None else RunLock(self.path, "written").acquire()

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
            If the id is already listed, the step is not positive, another writer holds the
            run lock, a folder on the way is a link leaving the run folder, or a file cannot be
            written (e.g. the disk is full); then the run still lists only complete checkpoints.
        """
        check_step(step, start)
        held = self._writing()
        try:
            entry = write_checkpoint(
                self.path,
                self.n_bands,
                self.config.model,
                step,
                start,
                run_step,
                (model_state, optimizer_state, training_state, stats),
            )
            return info_from_entry(entry)
        finally:
            if held is not None:
                held.release()

    def record_selection(self, start: int, scores: Sequence[float]) -> None:
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
            manifest["start_scores"] = [float(value) for value in scores]
            write_manifest(self.manifest_path, manifest)

    def recommend(self, checkpoint_id: str, reason: str) -> None:
        """Record ``checkpoint_id`` as the recommended checkpoint in ``run.json`` (atomically).

        Raises
        ------
        CheckpointError
            If the run lists no such checkpoint.
        """
        self._record_for_checkpoint(
            checkpoint_id, "recommended_checkpoint", {"checkpoint_id": checkpoint_id, "reason": reason}
        )

    def choose(self, checkpoint_id: str) -> None:
        """Record ``checkpoint_id`` as the chosen checkpoint in ``run.json`` (atomically).

        Raises
        ------
        CheckpointError
            If the run lists no such checkpoint.
        """
        self._record_for_checkpoint(checkpoint_id, "chosen_checkpoint", checkpoint_id)

    def _record_for_checkpoint(self, checkpoint_id: str, key: str, value: object) -> None:
        """Set ``run.json``'s ``key`` to ``value`` if the run lists ``checkpoint_id`` (atomically)."""
        with self._locked():
            manifest = read_manifest(self.manifest_path)
            self._entry(manifest, checkpoint_id)
            manifest[key] = value
            write_manifest(self.manifest_path, manifest)

    # ------------------------------------------------------------------ loading

    def _resolve(self, checkpoint_id: str | None) -> dict:
        if checkpoint_id is None:
            default = self.default_checkpoint()
            if default is None:
                raise CheckpointError(f"{self.manifest_path}: the run has no checkpoints yet")
            checkpoint_id = default[0].checkpoint_id
        return self._entry(read_manifest(self.manifest_path), checkpoint_id)

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
            If the checkpoint is not listed or one of its files is missing, corrupt, outside
            the run folder or does not fit the run: the same checks as :meth:`load_model`
            (tensor names, shapes, dtypes, finite values), plus the optimizer state against
            the model's parameters and the step of ``state.json`` against ``run.json``.
        """
        entry = self._entry(read_manifest(self.manifest_path), checkpoint_id)
        return read_checkpoint_state(
            self.path / CHECKPOINT_DIR / entry["id"], entry, self.path, self.n_bands, self.config.model
        )

    def load_model(self, checkpoint_id: str | None = None, device: str = "cpu") -> DGCModel:
        """Build the model of a checkpoint in evaluation mode.

        Parameters
        ----------
        checkpoint_id : str, optional
            Default: the chosen checkpoint, else the recommended one, else the latest.
        device : str
            Torch device for the model.

        Raises
        ------
        CheckpointError
            If there is no such checkpoint, its file is corrupt or outside the run folder, or
            its tensors do not fit the run's band count and model configuration or hold NaN or
            infinite values (checked before the model is built, so a ``run.json`` asking for
            an absurd size cannot make it allocate).
        """
        from napari_dgc.model.network import DGCModel

        entry = self._resolve(checkpoint_id)
        folder = self.path / CHECKPOINT_DIR / entry["id"]
        model_state, _ = read_model_weights(folder, entry, self.path, self.n_bands, self.config.model)
        model = DGCModel(self.n_bands, self.config.model)
        model.load_state_dict(model_state)
        return model.to(device).eval()
