"""Paths inside a run folder: nothing read from ``run.json`` or written by training may leave it.

Checkpoint ids are checked against a strict pattern (no ``/`` or ``..``), but a folder on the
way can still be a symbolic link to elsewhere (``RUN/checkpoints -> /somewhere``): every path is
resolved and must stay under the resolved run folder, else the read or write is refused with a
message naming the link.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from napari_dgc.errors import CheckpointError


def inside_run(run_path: Path, path: Path, action: str = "write") -> Path:
    """``path`` if, with every symbolic link resolved, it stays inside the run folder.

    Parameters
    ----------
    run_path : Path
        The run folder.
    path : Path
        A path under it (need not exist yet).
    action : str
        ``"write"`` or ``"read"``, for the message.

    Raises
    ------
    CheckpointError
        Naming the link that leads outside.
    """
    root = Path(os.path.realpath(run_path))
    resolved = Path(os.path.realpath(path))
    if resolved == root or root in resolved.parents:
        return path
    link = _first_link(run_path, path)
    where = f"{link} is a symbolic link to {os.readlink(link)}" if link else f"{path} resolves to {resolved}"
    raise CheckpointError(
        f"{where}, outside the run folder {run_path}; refusing to {action} through it "
        "(replace the link by a real folder)"
    )


def _first_link(run_path: Path, path: Path) -> Path | None:
    """The first symbolic link on the way from ``run_path`` to ``path``, if any."""
    try:
        parts = Path(path).relative_to(run_path).parts
    except ValueError:
        return None
    current = Path(run_path)
    for part in parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def remove_created(folders: list[Path]) -> None:
    """Remove the folders a failed run creation made (innermost first), if nothing else is in them.

    Only the lock files and temporary files of the creation itself may be there; a folder
    holding anything else (a user's file, or another process's run) is kept.
    """
    from napari_dgc.atomic import TEMP_SUFFIX
    from napari_dgc.run_folder.lock import MANIFEST_LOCK_NAME, RUN_LOCK_NAME

    ours = {RUN_LOCK_NAME, MANIFEST_LOCK_NAME}
    for folder in reversed(folders):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        if all(name in ours or name.endswith(TEMP_SUFFIX) for name in names):
            shutil.rmtree(folder, ignore_errors=True)
