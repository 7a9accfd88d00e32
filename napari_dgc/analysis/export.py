"""Exports: class and cluster maps with a legend, and self-contained model folders.

Mean ± std spectra of clusters and classes go to CSV (:func:`write_spectra_csv`).

Label maps are written as TIFF, PNG (palette PNG coloured like the classes; values are the
palette indices) or NPY, each with a legend ``<stem>.legend.json`` naming every value.

A *model folder* is what ``napari-dgc segment --classes FOLDER`` needs to turn new cubes into
class maps::

    FOLDER/model.safetensors   weights of the chosen checkpoint (no pickle)
    FOLDER/model.json          band count, wavelengths, model settings, source run/checkpoint
    FOLDER/classes.json        the class mapping (complete)

Every file goes through :mod:`napari_dgc.atomic`; nothing existing is replaced unless the
caller passes ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dgc.analysis.classes import ClassMapping, ClusterStatistics, color_to_rgb
from napari_dgc.atomic import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, file_sha256
from napari_dgc.errors import CheckpointError, ConfigError, DGCError, MappingError
from napari_dgc.safe_json import read_json

if TYPE_CHECKING:
    from napari_dgc.io.preparation import Preparation
    from napari_dgc.model.network import DGCModel
    from napari_dgc.run_folder import RunDirectory

MODEL_FOLDER_FORMAT = "napari-dgc-model"
MODEL_FOLDER_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MODEL_INFO_FILE = "model.json"
CLASSES_FILE = "classes.json"
LABEL_MAP_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
_CLUSTER_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
)


# ---------------------------------------------------------------------- label maps
def legend_path(path: str | os.PathLike) -> Path:
    """Where the legend of the label map ``path`` goes: ``<stem>.legend.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".legend.json")


def cluster_legend(n_clusters: int, colors: Mapping[int, str] | None = None) -> dict:
    """Legend of a cluster map (values ``0..K-1``), coloured by ``colors`` or a fixed palette."""
    colors = colors or {}
    return {
        "kind": "clusters",
        "n_clusters": int(n_clusters),
        "values": [
            {
                "value": k,
                "name": f"cluster {k}",
                "color": colors.get(k, _CLUSTER_PALETTE[k % len(_CLUSTER_PALETTE)]),
            }
            for k in range(n_clusters)
        ],
    }


def write_label_map(
    path: str | os.PathLike,
    labels: np.ndarray,
    legend: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write a class or cluster map and its legend.

    Parameters
    ----------
    path : path-like
        Destination ending in ``.tif``, ``.tiff``, ``.png`` or ``.npy``.
    labels : np.ndarray
        ``(rows, cols)`` non-negative integer map.
    legend : mapping
        ``{"kind": ..., "values": [{"value", "name", "color"}, ...]}``, e.g.
        :meth:`ClassMapping.legend` or :func:`cluster_legend`; colours (``"#rrggbb"`` or
        ``None``) become the PNG palette.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    list of Path
        The map and the legend file.

    Raises
    ------
    DGCError
        For an unsupported suffix, a map that is not 2-D non-negative integers, or values
        that do not fit a PNG (256 and above).
    FileExistsError
        If the map or its legend exists and ``overwrite`` is false (nothing is written).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_MAP_SUFFIXES:
        raise DGCError(f"{path}: unsupported label-map type {suffix!r}; use {', '.join(LABEL_MAP_SUFFIXES)}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DGCError(f"{path}: a label map must be a 2-D array of non-negative integers")
    largest = int(labels.max()) if labels.size else 0
    if suffix == ".png" and largest > 255:
        raise DGCError(f"{path}: value {largest} does not fit a PNG (0..255); save as TIFF or NPY")
    legend_file = legend_path(path)
    if not overwrite:
        for target in (path, legend_file):
            if target.exists():
                raise FileExistsError(f"{target} exists; refusing to overwrite it")
    compact = labels.astype(np.uint8 if largest <= 255 else np.uint16 if largest <= 65535 else np.int32)
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, compact, allow_pickle=False)
    elif suffix == ".png":
        _write_palette_png(buffer, compact, legend)
    else:
        import tifffile

        tifffile.imwrite(buffer, compact)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_json(legend_file, {**dict(legend), "map": path.name})
    return [path, legend_file]


def _write_palette_png(buffer: io.BytesIO, labels: np.ndarray, legend: Mapping[str, Any]) -> None:
    from PIL import Image

    palette = np.zeros((256, 3), dtype=np.uint8)
    for entry in legend.get("values", []):
        value, color = int(entry["value"]), entry.get("color")
        if color and 0 <= value < 256:
            palette[value] = color_to_rgb(color)
    image = Image.fromarray(labels)  # mode "L"; putpalette turns it into "P" keeping the values
    image.putpalette(palette.ravel().tolist())
    image.save(buffer, format="PNG")


def write_class_map(
    path: str | os.PathLike,
    class_map: np.ndarray,
    mapping: ClassMapping,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write a class map (values: 1-based classes of ``mapping``, 0 unassigned) with its legend."""
    return write_label_map(path, class_map, mapping.legend(), overwrite=overwrite)


# ---------------------------------------------------------------------- model folders
def _replace_folder(staging: Path, folder: Path, overwrite: bool) -> None:
    """Move a fully written staging folder to ``folder`` (replacing an old model folder)."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    if not overwrite:
        raise FileExistsError(f"{folder} exists; refusing to overwrite it")
    if not (folder / MODEL_INFO_FILE).is_file():
        raise FileExistsError(f"{folder} exists and is not a napari-dgc model folder; refusing to replace it")
    retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, retired / folder.name)
    os.replace(staging, folder)
    shutil.rmtree(retired)


def export_model_folder(
    run: RunDirectory | str | os.PathLike,
    folder: str | os.PathLike,
    mapping: ClassMapping,
    *,
    checkpoint_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint's weights, settings and class mapping as one model folder.

    Parameters
    ----------
    run : RunDirectory or path-like
        The training run.
    folder : path-like
        Destination folder (created; it must not exist unless ``overwrite``).
    mapping : ClassMapping
        Complete mapping for the model's clusters.
    checkpoint_id : str, optional
        Default: the run's chosen checkpoint, else its latest.
    overwrite : bool
        Replace an existing model folder.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    MappingError
        If the mapping is incomplete or for another cluster count.
    CheckpointError
        If the run or checkpoint cannot be loaded.
    FileExistsError
        If ``folder`` exists and ``overwrite`` is false.
    """
    from napari_dgc.run_folder import RunDirectory
    from napari_dgc.run_folder.paths import inside_run
    from napari_dgc.run_folder.preparation_file import PREPARATION_FILE

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; refusing to overwrite it")
    run = run if isinstance(run, RunDirectory) else RunDirectory.open(run)
    if checkpoint_id is None:
        default = run.default_checkpoint()
        if default is None:
            raise CheckpointError(f"{run.path}: the run has no checkpoints yet")
        checkpoint_id = default[0].checkpoint_id
    model = run.load_model(checkpoint_id)
    n_clusters = model.config.n_clusters
    if mapping.n_clusters != n_clusters:
        raise MappingError(
            f"the mapping is for {mapping.n_clusters} clusters, but the model has {n_clusters}"
        )
    mapping.validate(complete=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        atomic_save_safetensors(staging / WEIGHTS_FILE, model.state_dict(), {"n_bands": str(model.n_bands)})
        info = {
            "format": MODEL_FOLDER_FORMAT,
            "version": MODEL_FOLDER_VERSION,
            "n_bands": int(model.n_bands),
            "n_clusters": int(n_clusters),
            "wavelengths": None if run.wavelengths is None else [float(w) for w in run.wavelengths],
            "model_config": model.config.to_dict(),
            "weights_sha256": file_sha256(staging / WEIGHTS_FILE),
            "source": {"run": str(Path(run.path).resolve()), "checkpoint": checkpoint_id},
            "preparation": run.config.prep.to_dict(),
        }
        references = inside_run(run.path, run.path / PREPARATION_FILE, "read")
        if references.is_file():  # the run's white/dark references travel with its model
            shutil.copyfile(references, staging / PREPARATION_FILE)
        atomic_write_json(staging / MODEL_INFO_FILE, info)
        atomic_write_json(staging / CLASSES_FILE, mapping.to_json())
        _replace_folder(staging, folder, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def read_model_info(folder: str | os.PathLike) -> dict:
    """Read and check ``model.json`` of a model folder.

    Raises
    ------
    CheckpointError
        If the folder or file is missing, not JSON, or not a napari-dgc model description.
    """
    file = Path(folder) / MODEL_INFO_FILE
    if not file.exists():
        raise CheckpointError(f"{file}: not found; {Path(folder)} is not a napari-dgc model folder")
    info = read_json(file, error=CheckpointError, what="model description")
    required = {"n_bands", "n_clusters", "model_config", "weights_sha256"}
    if not isinstance(info, dict) or info.get("format") != MODEL_FOLDER_FORMAT or not required <= info.keys():
        raise CheckpointError(f"{file}: not a napari-dgc model description")
    if info.get("version") != MODEL_FOLDER_VERSION:
        raise CheckpointError(f"{file}: unsupported model-folder version {info.get('version')!r}")
    return info


def load_model_folder(path: str | os.PathLike, device: str = "cpu") -> tuple[DGCModel, ClassMapping]:
    """Load a model folder written by :func:`export_model_folder`.

    Parameters
    ----------
    path : path-like
        The model folder.
    device : str
        Torch device for the model.

    Returns
    -------
    model : DGCModel
        In evaluation mode.
    mapping : ClassMapping
        Its (complete) class mapping.

    Raises
    ------
    CheckpointError
        For a missing, corrupt or inconsistent folder (weights checksum, tensor names, shapes,
        dtypes and finite values are checked as for a run's checkpoints, before a model of the
        described size is built; nothing is unpickled).
    MappingError
        If ``classes.json`` is invalid or for another cluster count.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_dgc.config import ModelConfig
    from napari_dgc.model.network import DGCModel
    from napari_dgc.run_folder.checkpoint_files import meta_model_state
    from napari_dgc.run_folder.validation import check_model_tensors

    folder = Path(path)
    info = read_model_info(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found")
    if file_sha256(weights) != info["weights_sha256"]:
        raise CheckpointError(f"{weights}: checksum differs from {MODEL_INFO_FILE}; the file is corrupt")
    n_bands = info["n_bands"]
    if not isinstance(n_bands, int) or isinstance(n_bands, bool) or n_bands < 1:
        raise CheckpointError(f"{folder / MODEL_INFO_FILE}: invalid band count {n_bands!r}")
    try:
        config = ModelConfig.from_dict(info["model_config"])
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{folder / MODEL_INFO_FILE}: invalid model settings ({error})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights}: cannot read the weights ({error})") from None
    # Shapes from a model on the meta device: a model.json asking for an absurd size is
    # refused here, before a model of that size is allocated.
    check_model_tensors(weights, meta_model_state(n_bands, config, folder / MODEL_INFO_FILE)[0], state)
    model = DGCModel(n_bands, config)
    model.load_state_dict(state)
    mapping = ClassMapping.load(folder / CLASSES_FILE, n_clusters=config.n_clusters)
    return model.to(device).eval(), mapping


def model_folder_preparation(path: str | os.PathLike) -> Preparation:
    """The preparation (band crop, references, binning) of the run a model folder was exported
    from, which cubes segmented with it need (none for folders exported before it was recorded).

    Raises
    ------
    CheckpointError
        Invalid preparation settings in ``model.json``, or references it names that the folder
        does not hold (or holds damaged).
    """
    from napari_dgc.config import PrepConfig
    from napari_dgc.run_folder.preparation_file import folder_preparation

    folder = Path(path)
    try:
        prep = PrepConfig.from_dict(read_model_info(folder).get("preparation", {}))
    except ConfigError as error:
        raise CheckpointError(f"{folder / MODEL_INFO_FILE}: invalid preparation settings ({error})") from None
    return folder_preparation(folder, prep)


# ---------------------------------------------------------------------- mean spectra
SPECTRA_CSV_COLUMNS = ("kind", "id", "name", "pixels", "band", "wavelength_nm", "mean", "std")


def spectra_csv_text(
    statistics: ClusterStatistics,
    wavelengths: Any = None,
    mapping: ClassMapping | None = None,
) -> str:
    """Mean ± std spectrum of every cluster (and class) as CSV text, one row per band.

    Parameters
    ----------
    statistics : ClusterStatistics
        Per-cluster statistics (:func:`~napari_dgc.analysis.classes.cluster_statistics`, or
        pooled over cubes with :meth:`ClusterStatistics.pooled`).
    wavelengths : array-like, optional
        Band centres in nm (one per band); the column is empty where unknown.
    mapping : ClassMapping, optional
        Also the rows of each class (its clusters' pixels pooled).

    Returns
    -------
    str
        Columns :data:`SPECTRA_CSV_COLUMNS`: ``kind`` (``cluster`` or ``class``), ``id`` (cluster
        id, or class value ``1..`` as in class maps), ``name``, ``pixels``, ``band`` (0-based),
        ``wavelength_nm``, ``mean``, ``std`` (empty for groups without pixels).

    Raises
    ------
    DGCError
        If the wavelengths do not have one value per band.
    """
    from napari_dgc.analysis.classes import class_statistics

    n_bands = statistics.mean.shape[1]
    if wavelengths is not None:
        wavelengths = np.asarray(wavelengths, dtype=np.float64).ravel()
        if wavelengths.size != n_bands:
            raise DGCError(f"{wavelengths.size} wavelengths for {n_bands} bands")
    groups = [("cluster", k, f"cluster {k}", statistics, k) for k in range(len(statistics.counts))]
    if mapping is not None:
        classes = class_statistics(statistics, mapping)
        groups += [
            ("class", index + 1, cls.name, classes, index) for index, cls in enumerate(mapping.classes)
        ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPECTRA_CSV_COLUMNS)
    for kind, ident, name, stats, row in groups:
        for band in range(n_bands):
            wavelength = "" if wavelengths is None else f"{wavelengths[band]:.6g}"
            mean, std = stats.mean[row, band], stats.std[row, band]
            writer.writerow(
                [
                    kind,
                    ident,
                    name,
                    int(stats.counts[row]),
                    band,
                    wavelength,
                    "" if np.isnan(mean) else f"{mean:.8g}",
                    "" if np.isnan(std) else f"{std:.8g}",
                ]
            )
    return out.getvalue()


def write_spectra_csv(
    path: str | os.PathLike,
    statistics: ClusterStatistics,
    wavelengths: Any = None,
    mapping: ClassMapping | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write :func:`spectra_csv_text` to ``path`` atomically.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    atomic_write_bytes(path, spectra_csv_text(statistics, wavelengths, mapping).encode("utf-8"))
    return path
