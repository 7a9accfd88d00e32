"""Opening a run folder for writing: its run lock, the creation of a new one, leftovers of a kill.

A writer (training, resuming) holds the run lock (:class:`~napari_dgc.run_folder.lock.RunLock`)
from before it looks at what the folder holds, so the "a run already exists here" check and the
checkpoints that follow cannot interleave with another writer's. Opening for writing also
removes the temporary files a killed writer left (:func:`napari_dgc.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from napari_dgc import atomic
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder.checkpoint_files import write_checkpoint_files
from napari_dgc.run_folder.lock import RunLock, manifest_lock
from napari_dgc.run_folder.manifest import (
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    checkpoint_id_for,
    read_manifest,
    to_json,
    write_manifest,
)
from napari_dgc.run_folder.paths import inside_run, remove_created


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing[::-1]


def create_locked(path: Path, manifest: dict, purpose: str) -> RunLock:
    """Create the run folder ``path``, take its run lock and write the new ``run.json``.

    Returns the held lock. On any failure (the folder holds a run, the disk is full, ...)
    nothing is left behind: folders this call created are removed again.

    Raises
    ------
    CheckpointError
        If ``path`` is a file or holds a run, its lock is held or a link, or a write fails.
    """
    manifest_path = path / MANIFEST_NAME
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: is a file, not a run folder")
    created = _missing_parents(path)
    lock = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(path, purpose).acquire()
        if manifest_path.exists() or manifest_path.is_symlink():
            raise CheckpointError(
                f"{manifest_path}: a run already exists here; open it to resume or choose another folder"
            )
        write_manifest(manifest_path, manifest)
    except BaseException as error:
        if lock is not None:
            lock.release()
        remove_created(created)
        if isinstance(error, OSError):
            raise CheckpointError(
                f"{path}: could not create the run folder: {error.strerror or error}"
            ) from error
        raise
    return lock


def lock_for_writing(path: Path, purpose: str) -> RunLock:
    """Take the run lock of the existing run ``path`` and clean what a killed writer left.

    Raises
    ------
    CheckpointError
        If another process, thread or generator holds it ("run RUN is busy: ..."), or a lock
        file or checkpoint folder is a link leaving the run folder.
    """
    if not (path / MANIFEST_NAME).is_file():
        raise CheckpointError(f"{path / MANIFEST_NAME}: file not found")
    lock = RunLock(path, purpose).acquire()
    try:
        clean_leftovers(path)
    except BaseException:
        lock.release()
        raise
    return lock


def clean_leftovers(path: Path) -> None:
    """Remove temporary files of dead writers in the run folder and its checkpoint folders.

    Raises
    ------
    CheckpointError
        If ``RUN/checkpoints`` is a link leading outside the run folder (nothing is touched there).
    """
    atomic.remove_stale_temporaries(path)
    checkpoints = path / CHECKPOINT_DIR
    if not (checkpoints.exists() or checkpoints.is_symlink()):
        return
    inside_run(path, checkpoints)
    try:
        folders = [entry.path for entry in os.scandir(checkpoints) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for folder in folders:
        atomic.remove_stale_temporaries(folder)


def write_checkpoint(
    run_path: Path,
    n_bands: int,
    model_config: Any,
    step: int,
    start: int,
    run_step: int | None,
    content: tuple,
) -> dict:
    """Write one checkpoint's files, then list it in ``run.json``; return its entry.

    ``content`` is ``(model_state, optimizer_state, training_state, stats)``, see
    :meth:`RunDirectory.save_checkpoint` (whose caller holds the run lock). The folder must stay
    inside the run; a failed write removes it (nothing lists it) and raises CheckpointError.
    """
    model_state, optimizer_state, training_state, stats = content
    manifest_path = run_path / MANIFEST_NAME
    checkpoint_id = checkpoint_id_for(step, start)
    run_step = int(step if run_step is None else run_step)

    def refuse_listed(manifest: dict) -> None:
        if any(entry["id"] == checkpoint_id for entry in manifest["checkpoints"]):
            raise CheckpointError(f"{manifest_path}: checkpoint {checkpoint_id} already exists")

    refuse_listed(read_manifest(manifest_path))
    folder = inside_run(run_path, run_path / CHECKPOINT_DIR / checkpoint_id)
    metadata = {
        "format": "napari-dgc-model",
        "n_bands": str(n_bands),
        "model_config": json.dumps(to_json(model_config.to_dict())),
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
        with manifest_lock(run_path):
            manifest = read_manifest(manifest_path)
            refuse_listed(manifest)  # never two entries of one id, whoever wrote the other
            manifest["checkpoints"] = sorted(
                [*manifest["checkpoints"], entry], key=lambda item: item.get("run_step", item["step"])
            )
            write_manifest(manifest_path, manifest)
    except OSError as error:
        # Not listed, so nothing refers to the partial folder: free its space.
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(
            f"{folder}: could not write checkpoint {checkpoint_id}: {error.strerror or error}"
        ) from error
    return entry
