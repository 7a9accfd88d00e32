"""The references a run was trained with, stored in its folder (``RUN/preparation.safetensors``).

A run's preparation is its ``prep`` settings (in ``run.json``) plus the white and dark
references averaged from the reference files when the run was created. The references are
stored in the run, so segmenting with the run later applies exactly the correction training
used, even if the reference files have moved or changed; the file names only the run's own
file (resolved, and refused if a link leads out of the run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.atomic import atomic_write_bytes
from napari_dgc.errors import CheckpointError
from napari_dgc.io.preparation import Preparation, Reference
from napari_dgc.run_folder.paths import inside_run

if TYPE_CHECKING:
    from napari_dgc.config import PrepConfig
    from napari_dgc.run_folder.directory import RunDirectory

PREPARATION_FILE = "preparation.safetensors"
#: Largest stored reference: a spectrum per column of a very wide camera (``columns x bands``).
_MAX_REFERENCE_VALUES = 2**24


def save_references(run_path: str | Path, preparation: Preparation) -> None:
    """Write the white and dark references of ``preparation`` into the run folder (atomically).

    Nothing is written when the preparation has no reference.

    Raises
    ------
    CheckpointError
        The file would be written through a link leading out of the run folder.
    """
    from safetensors.numpy import save

    tensors, metadata = {}, {}
    for what, reference in (("white", preparation.white), ("dark", preparation.dark)):
        if reference is not None:
            tensors[what] = np.ascontiguousarray(reference.spectra, dtype=np.float32)
            metadata[what] = reference.source
    if not tensors:
        return
    run_path = Path(run_path)
    atomic_write_bytes(inside_run(run_path, run_path / PREPARATION_FILE), save(tensors, metadata=metadata))


def run_preparation(run: RunDirectory) -> Preparation:
    """The preparation ``run`` was trained with: its ``prep`` settings and stored references.

    Raises
    ------
    CheckpointError
        The settings name a reference the run folder does not hold, or the stored references
        are unreadable, of the wrong shape or band count, or hold NaN values.
    """
    return folder_preparation(run.path, run.config.prep)


def folder_preparation(folder: str | Path, prep: PrepConfig) -> Preparation:
    """The preparation of ``prep`` settings whose references are stored in ``folder`` (a run
    folder, or a model folder exported from one).

    Raises
    ------
    CheckpointError
        As :func:`run_preparation`.
    """
    folder = Path(folder)
    references: dict[str, Reference] = {}
    wanted = [what for what in ("white", "dark") if getattr(prep, what) is not None]
    if wanted:
        file = inside_run(folder, folder / PREPARATION_FILE, "read")
        references = _read_references(file, wanted)
    return Preparation.from_settings(prep, references=references)


def _read_references(file: Path, wanted: list[str]) -> dict[str, Reference]:
    """The references ``wanted`` from a run's preparation file, each checked."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing; the run's settings name a {' and a '.join(wanted)} reference, "
            "which training stores here"
        )
    try:
        with safe_open(str(file), framework="numpy") as opened:
            names = set(opened.keys())
            metadata = opened.metadata() or {}
            missing = [what for what in wanted if what not in names]
            if missing:
                raise CheckpointError(f"{file}: holds no {' or '.join(missing)} reference")
            references = {}
            for what in wanted:
                shape = opened.get_slice(what).get_shape()
                if (
                    len(shape) != 2
                    or shape[0] < 1
                    or shape[1] < 1
                    or shape[0] * shape[1] > _MAX_REFERENCE_VALUES
                ):
                    raise CheckpointError(
                        f"{file}: the {what} reference has shape {shape}, not (columns, bands)"
                    )
                spectra = opened.get_tensor(what)
                if spectra.dtype != np.float32 or not np.isfinite(spectra).all():
                    raise CheckpointError(f"{file}: the {what} reference is not finite float32 values")
                references[what] = Reference(spectra, str(metadata.get(what, file)))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error
    return references
