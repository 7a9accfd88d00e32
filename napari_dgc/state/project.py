"""Projects: the whole state of a napari-dgc session in one JSON file (``*.dgcproj.json``).

A project names the cubes (with the options they were opened with), the run folder, the chosen
checkpoint, the class mapping being built (names, colours, cluster → class; it may be partial),
the mask files, the mask class names and the last IoU scores. It stores no pixels: reopening
it reads the files again. No Qt or napari here; the "Save project…" / "Open project…" buttons
(:mod:`napari_dgc._qt.project_view`) turn layers and panels into a :class:`Project` and back.

Paths are stored relative to the project file when they lie in its folder (the folder can
then be moved or shared as a whole), else absolute. A relative path read back must stay in the
project folder with every symbolic link resolved (as :mod:`napari_dgc.run_folder.paths`
demands of run folders): ``../../etc/x`` or a link leading out is refused; a path stored
absolute is the user's own choice and is used as it is.

:func:`load_project` checks every field and that every named file exists before returning, so
a bad project is refused whole, with a message naming the file and the field::

    project = load_project("leaf.dgcproj.json")
    project.cubes[0].path, project.run, project.checkpoint, project.mapping
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.masks import Mask, read_mask
from napari_dgc.atomic import atomic_write_json
from napari_dgc.errors import DGCError
from napari_dgc.io import Cube, open_cube
from napari_dgc.run_folder import RunDirectory
from napari_dgc.safe_json import read_json

PROJECT_FORMAT = "napari-dgc-project"
PROJECT_VERSION = 1
#: File name ending of project files (the save dialog adds it).
PROJECT_SUFFIX = ".dgcproj.json"
#: Largest project file read: a project names files, it holds no pixels.
MAX_PROJECT_BYTES = 4 * 2**20
_REPORT_FORMAT = "napari-dgc-evaluation"


class ProjectError(DGCError):
    """A project file is malformed, names missing files, or a path that leaves its folder."""


@dataclass(frozen=True)
class ProjectCube:
    """A cube of the project and how it was opened (:func:`napari_dgc.io.open_cube`'s options).

    Attributes
    ----------
    name : str
        Its layer name (cluster, class and mask layers refer to the cube by it).
    path : Path
        The cube file or PNG-band folder.
    key : str or None
        MATLAB variable.
    shape : (int, int) or None
        ``(rows, cols)`` of a MATLAB 2-D ``bands x pixels`` matrix.
    band_axis : int or None
        Band axis override of a ``.npy``, ``.mat`` or TIFF array.
    """

    name: str
    path: Path
    key: str | None = None
    shape: tuple[int, int] | None = None
    band_axis: int | None = None


@dataclass(frozen=True)
class ProjectMask:
    """A ground-truth mask file and the cube (layer name) it belongs to."""

    cube: str
    path: Path


@dataclass(frozen=True)
class Project:
    """Everything a project file records (see the module docstring).

    Attributes
    ----------
    cubes : tuple of ProjectCube
        The cubes, in layer order.
    run : Path or None
        The run folder reviewed.
    checkpoint : str or None
        The checkpoint shown (``None``: the run's chosen, else latest one).
    mapping : ClassMapping or None
        The class mapping, possibly partial.
    masks : tuple of ProjectMask
        Mask files, at most one per cube.
    mask_class_names : str
        The merge panel's names of mask values ("" for the masks' own legends).
    scores : dict or None
        The last IoU report (``EvaluationReport.to_json()``), as it was computed.
    """

    cubes: tuple[ProjectCube, ...] = ()
    run: Path | None = None
    checkpoint: str | None = None
    mapping: ClassMapping | None = None
    masks: tuple[ProjectMask, ...] = ()
    mask_class_names: str = ""
    scores: dict[str, Any] | None = field(default=None, compare=False)

    def describe(self) -> str:
        """One line: what the project holds."""
        parts = [f"{len(self.cubes)} cube(s)"]
        if self.run is not None:
            parts.append(f"run {self.run.name}" + (f" @ {self.checkpoint}" if self.checkpoint else ""))
        if self.mapping is not None:
            parts.append(f"{len(self.mapping.classes)} classes")
        if self.masks:
            parts.append(f"{len(self.masks)} mask(s)")
        if self.scores is not None:
            mean = self.scores.get("pooled", {}).get("mean_iou")
            if isinstance(mean, (int, float)):
                parts.append(f"mean IoU {mean:.4f}")
        return ", ".join(parts)


# ---------------------------------------------------------------------- writing
def _stored_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (POSIX form) if it lies there, links resolved; else absolute."""
    absolute = Path(os.path.abspath(path))
    relative = os.path.relpath(absolute, os.path.abspath(folder))
    inside = not relative.startswith(os.pardir) and not os.path.isabs(relative)
    # Stored relative only if it reads back to the same place (a link in the folder may lead out).
    if inside and _within(os.path.realpath(absolute), os.path.realpath(folder)):
        return Path(relative).as_posix()
    return str(absolute)


def _within(resolved: str, root: str) -> bool:
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def project_document(project: Project, folder: str | os.PathLike) -> dict[str, Any]:
    """The JSON document of ``project`` with paths stored relative to ``folder`` where possible."""
    folder = Path(folder)
    return {
        "format": PROJECT_FORMAT,
        "version": PROJECT_VERSION,
        "cubes": [
            {
                "name": cube.name,
                "path": _stored_path(cube.path, folder),
                "key": cube.key,
                "shape": None if cube.shape is None else [int(v) for v in cube.shape],
                "band_axis": cube.band_axis,
            }
            for cube in project.cubes
        ],
        "run": None if project.run is None else _stored_path(project.run, folder),
        "checkpoint": project.checkpoint,
        "mapping": None if project.mapping is None else project.mapping.to_json(),
        "masks": [{"cube": mask.cube, "path": _stored_path(mask.path, folder)} for mask in project.masks],
        "mask_class_names": project.mask_class_names,
        "scores": project.scores,
    }


def save_project(path: str | os.PathLike, project: Project, *, overwrite: bool = False) -> Path:
    """Write ``project`` to ``path`` atomically (a crash leaves the old file or the new one).

    Parameters
    ----------
    path : path-like
        The project file (conventionally ending in :data:`PROJECT_SUFFIX`).
    project : Project
        What to record.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    ProjectError
        If the folder of ``path`` does not exist (it is not created).
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise ProjectError(f"{path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    atomic_write_json(path, project_document(project, path.parent))
    return path


# ---------------------------------------------------------------------- reading
class _Reader:
    """Checks the fields of one project document; every message names the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = Path(os.path.abspath(path.parent))

    def fail(self, where: str, problem: str) -> ProjectError:
        return ProjectError(f"{self.path}: {where}: {problem}")

    def string(self, value: Any, where: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            return self.wrong(value, where, "a non-empty string" + (" or null" if optional else ""))
        return value

    def wrong(self, value: Any, where: str, expected: str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise self.fail(where, f"expected {expected}, got {shown}")

    def file_path(self, value: Any, where: str, *, folder: bool = False) -> Path:
        """A stored path: relative ones must stay in the project folder; the target must exist."""
        text = self.string(value, where)
        if "\x00" in text:
            raise self.fail(where, "the path holds a NUL character")
        stored = Path(text).expanduser()
        if stored.is_absolute():
            path = stored
        else:
            path = self.folder / stored
            resolved, root = os.path.realpath(path), os.path.realpath(self.folder)
            if not _within(resolved, root):
                raise self.fail(
                    where,
                    f"{text!r} resolves to {resolved}, outside the project folder {self.folder}; "
                    "refusing it (a project may name files elsewhere only by absolute paths)",
                )
        if not path.exists():
            raise self.fail(where, f"{path} does not exist")
        if folder and not path.is_dir():
            raise self.fail(where, f"{path} is not a folder")
        return path

    def cube(self, entry: Any, where: str) -> ProjectCube:
        if not isinstance(entry, Mapping):
            self.wrong(entry, where, "an object with 'name' and 'path'")
        unknown = set(entry) - {"name", "path", "key", "shape", "band_axis"}
        if unknown:
            raise self.fail(where, f"unknown field(s) {sorted(unknown)}")
        shape = entry.get("shape")
        if shape is not None and not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            self.wrong(shape, f"{where}.shape", "[rows, cols] of positive integers or null")
        band_axis = entry.get("band_axis")
        if band_axis is not None and (isinstance(band_axis, bool) or band_axis not in (0, 1, 2)):
            self.wrong(band_axis, f"{where}.band_axis", "0, 1, 2 or null")
        return ProjectCube(
            name=self.string(entry.get("name"), f"{where}.name"),
            path=self.file_path(entry.get("path"), f"{where}.path"),
            key=self.string(entry.get("key"), f"{where}.key", optional=True),
            shape=None if shape is None else (shape[0], shape[1]),
            band_axis=band_axis,
        )

    def listing(self, value: Any, where: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.wrong(value, where, "a list")
        return value


def load_project(path: str | os.PathLike) -> Project:
    """Read and check a project file; nothing is opened or shown.

    Every field is checked, every file it names must exist (cubes, masks, the run folder with
    its ``run.json``) and the checkpoint must be one of the run's, so a project that cannot be
    restored whole is refused before anything is restored.

    Parameters
    ----------
    path : path-like
        The project file.

    Returns
    -------
    Project
        Paths made absolute.

    Raises
    ------
    ProjectError
        Naming the file and the field: not a project, another version, a field of the wrong
        type, a missing file, a path that leaves the project folder, a run that cannot be
        opened or lacks the checkpoint, a mask of a cube the project does not have, or a
        malformed class mapping.
    """
    path = Path(path).expanduser()
    document = read_json(path, error=ProjectError, what="napari-dgc project", max_bytes=MAX_PROJECT_BYTES)
    reader = _Reader(path)
    if not isinstance(document, Mapping) or document.get("format") != PROJECT_FORMAT:
        raise ProjectError(f'{path}: not a napari-dgc project (no "format": "{PROJECT_FORMAT}")')
    if document.get("version") != PROJECT_VERSION:
        raise reader.fail("version", f"unsupported project version {document.get('version')!r}")
    known = {
        "format",
        "version",
        "cubes",
        "run",
        "checkpoint",
        "mapping",
        "masks",
        "mask_class_names",
        "scores",
    }
    unknown = set(document) - known
    if unknown:
        raise reader.fail("top level", f"unknown field(s) {sorted(unknown)}")

    cubes = [
        reader.cube(entry, f"cubes[{i}]")
        for i, entry in enumerate(reader.listing(document.get("cubes"), "cubes"))
    ]
    names = [cube.name for cube in cubes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise reader.fail(f"cubes[{i}].name", f"{name!r} is used by two cubes")

    run = None if document.get("run") is None else reader.file_path(document["run"], "run", folder=True)
    checkpoint = reader.string(document.get("checkpoint"), "checkpoint", optional=True)
    if checkpoint is not None and run is None:
        raise reader.fail("checkpoint", "a checkpoint needs a run folder")
    if run is not None:
        try:
            ids = [info.checkpoint_id for info in RunDirectory.open(run).checkpoints()]
        except DGCError as error:
            raise reader.fail("run", str(error)) from None
        if checkpoint is not None and checkpoint not in ids:
            raise reader.fail("checkpoint", f"the run {run} has no checkpoint {checkpoint!r}")

    mapping = None
    if document.get("mapping") is not None:
        try:
            mapping = ClassMapping.from_json(document["mapping"], complete=False)
        except DGCError as error:
            raise reader.fail("mapping", str(error)) from None

    masks = []
    for i, entry in enumerate(reader.listing(document.get("masks"), "masks")):
        where = f"masks[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"cube", "path"}:
            reader.wrong(entry, where, "an object with exactly 'cube' and 'path'")
        cube = reader.string(entry["cube"], f"{where}.cube")
        if cube not in names:
            raise reader.fail(f"{where}.cube", f"{cube!r} is not one of the project's cubes {names}")
        if any(mask.cube == cube for mask in masks):
            raise reader.fail(f"{where}.cube", f"a second mask of {cube!r}")
        masks.append(ProjectMask(cube, reader.file_path(entry["path"], f"{where}.path")))

    class_names = document.get("mask_class_names", "")
    if not isinstance(class_names, str):
        reader.wrong(class_names, "mask_class_names", "a string")
    scores = document.get("scores")
    if scores is not None and not (isinstance(scores, Mapping) and scores.get("format") == _REPORT_FORMAT):
        reader.wrong(scores, "scores", f'an IoU report ("format": "{_REPORT_FORMAT}") or null')
    return Project(
        cubes=tuple(cubes),
        run=run,
        checkpoint=checkpoint,
        mapping=mapping,
        masks=tuple(masks),
        mask_class_names=class_names,
        scores=None if scores is None else dict(scores),
    )


def project_path(path: str | os.PathLike) -> Path:
    """``path`` with :data:`PROJECT_SUFFIX` appended unless it ends in ``.json`` already."""
    path = Path(path)
    return path if path.name.lower().endswith(".json") else path.with_name(path.name + PROJECT_SUFFIX)


# ---------------------------------------------------------------------- restoring
@dataclass(frozen=True)
class ProjectFiles:
    """What a project's files hold, read before anything is shown.

    Attributes
    ----------
    project : Project
        The project.
    cubes : dict of str to Cube
        Cube name → the opened (lazy) cube.
    masks : dict of str to Mask
        Cube name → its checked mask: of the cube's size, or of its clusters' size when the
        run bins pixels (:func:`mask_binning`).
    """

    project: Project
    cubes: dict[str, Cube]
    masks: dict[str, Mask]


def read_project(path: str | os.PathLike) -> ProjectFiles:
    """:func:`load_project`, then open every cube and read every mask (checked against its cube).

    Slow for large PNG-band folders: the GUI calls it in a worker. Any problem raises before
    anything is restored, so a project is reopened whole or not at all.

    Raises
    ------
    ProjectError
        As :func:`load_project`, or a cube or mask that cannot be read (naming the field).
    """
    path = Path(path).expanduser()
    project = load_project(path)
    cubes: dict[str, Cube] = {}
    for i, entry in enumerate(project.cubes):
        try:
            cubes[entry.name] = open_cube(
                entry.path, key=entry.key, shape=entry.shape, band_axis=entry.band_axis
            )
        except DGCError as error:
            raise ProjectError(f"{path}: cubes[{i}]: {error}") from None
    masks: dict[str, Mask] = {}
    for i, entry in enumerate(project.masks):
        try:
            mask = read_mask(entry.path)
        except DGCError as error:
            raise ProjectError(f"{path}: masks[{i}]: {error}") from None
        cube_hw = cubes[entry.cube].shape_hw
        if mask_binning(cube_hw, mask.values.shape) is None:
            raise ProjectError(
                f"{path}: masks[{i}]: {entry.path} is {mask.values.shape[0]}x{mask.values.shape[1]}, "
                f"the cube {entry.cube!r} {cube_hw[0]}x{cube_hw[1]} (nor that binned)"
            )
        masks[entry.cube] = mask
    return ProjectFiles(project, cubes, masks)


def mask_binning(cube_hw: tuple[int, int], mask_hw: tuple[int, ...]) -> int | None:
    """Side of the cube's pixel blocks one mask pixel stands for: 1 for a mask of the cube's
    size, ``b`` for one drawn on the clusters of a run binned ``b x b``; ``None`` if neither.
    """
    if len(mask_hw) != 2 or min(mask_hw) < 1:
        return None
    binning = cube_hw[0] // mask_hw[0]
    return (
        binning if binning >= 1 and (cube_hw[0] // binning, cube_hw[1] // binning) == tuple(mask_hw) else None
    )
