"""``napari-dgc segment``: cluster (and class) maps of whole cubes, tile by tile.

Two sources of the model::

    napari-dgc segment RUN CUBE... --out DIR [--checkpoint ID]     a training run folder
    napari-dgc segment --classes MODEL_FOLDER CUBE... --out DIR     an exported model folder

For every cube it writes ``DIR/<name>_labels.<tif|png|npy>`` (cluster ids; PNG with a colour
palette) with its ``.legend.json``; with ``--classes`` also ``DIR/<name>_classes.<ext>`` (class
values, 0 = unassigned); with ``--probabilities`` ``DIR/<name>_probabilities.<tif|npy>`` (float32
``K x rows x cols``; TIFF when the maps are PNG). Every file is written atomically. All inputs
are opened and checked, and existing outputs refused (unless ``--overwrite``), before the first
cube is segmented.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.errors import ConfigError, DGCError

if TYPE_CHECKING:
    from napari_dgc.analysis.classes import ClassMapping
    from napari_dgc.model.network import DGCModel


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``segment`` sub-command."""
    parser = subparsers.add_parser(
        "segment",
        usage=(
            "napari-dgc segment (RUN [--checkpoint ID] | --classes MODEL_FOLDER) CUBE... --out DIR [options]"
        ),
        help="write cluster (and class) maps of cubes with a trained model",
        description=(
            "Segment whole cubes of any size tile by tile with a checkpoint of a training run "
            "(default: the chosen checkpoint, else the latest) or with an exported model "
            "folder (--classes, which also writes class maps), one map per cube."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN CUBE",
        help="the run folder (unless --classes is given), then the cubes (any format)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--checkpoint", metavar="ID", help="checkpoint id, e.g. step-000400")
    parser.add_argument(
        "--classes",
        metavar="MODEL_FOLDER",
        help="exported model folder (weights + class mapping): also write class maps",
    )
    parser.add_argument("--format", choices=("tif", "png", "npy"), default="tif", help="map file format")
    parser.add_argument(
        "--tile",
        type=_positive_int,
        default=256,
        metavar="N",
        help="tile side in pixels (memory vs. speed; the maps do not depend on it)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tiles segmented at once by parallel threads (default: PyTorch's thread count, "
        "i.e. the cores); each holds one tile in memory",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (default auto: CUDA when available)"
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="also write per-pixel cluster probabilities"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=_run)


def _output_stem(cube_argument: str) -> str:
    path = Path(cube_argument)
    return path.name if path.is_dir() else path.stem


def _probability_bytes(probabilities: np.ndarray, file_format: str) -> bytes:
    buffer = io.BytesIO()
    if file_format == "npy":
        np.save(buffer, probabilities, allow_pickle=False)
    else:
        import tifffile

        tifffile.imwrite(buffer, probabilities)
    return buffer.getvalue()


def _load_model(args: argparse.Namespace):
    """Return ``(model, class mapping or None, cube arguments)`` from the chosen source."""
    from napari_dgc.model.device import resolve_device

    device = str(resolve_device(args.device))
    if args.classes is not None:
        if args.checkpoint is not None:
            raise ConfigError("--checkpoint selects a run's checkpoint; it cannot go with --classes")
        from napari_dgc.analysis.export import load_model_folder

        model, mapping = load_model_folder(args.classes, device=device)
        return model, mapping, args.inputs
    if len(args.inputs) < 2:
        raise ConfigError("give a run folder and at least one cube (or --classes MODEL_FOLDER)")
    from napari_dgc.run_folder import RunDirectory

    model = RunDirectory.open(args.inputs[0]).load_model(args.checkpoint, device=device)
    return model, None, args.inputs[1:]


def _run(args: argparse.Namespace) -> int:
    from napari_dgc.analysis.export import legend_path
    from napari_dgc.io import open_cube

    model, mapping, cube_arguments = _load_model(args)
    stems = [_output_stem(name) for name in cube_arguments]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ConfigError(f"several cubes would write the same output name: {duplicates}")
    cubes = [open_cube(name) for name in cube_arguments]
    for cube in cubes:
        if cube.n_bands != model.n_bands:
            raise ConfigError(
                f"{cube.path}: the cube has {cube.n_bands} bands, the model was trained on {model.n_bands}"
            )
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")

    probability_format = "tif" if args.format == "png" else args.format
    planned = []
    for stem in stems:
        maps = {"labels": out_dir / f"{stem}_labels.{args.format}"}
        if mapping is not None:
            maps["classes"] = out_dir / f"{stem}_classes.{args.format}"
        probabilities = out_dir / f"{stem}_probabilities.{probability_format}"
        planned.append((maps, probabilities if args.probabilities else None))
    if not args.overwrite:
        for maps, probabilities in planned:
            targets = [*maps.values(), *map(legend_path, maps.values()), probabilities]
            for target in targets:
                if target is not None and target.exists():
                    raise ConfigError(f"{target}: exists; pass --overwrite to replace it")
    created = [folder for folder in [out_dir, *out_dir.parents] if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _segment_all(args, model, mapping, cubes, planned, probability_format)
    except BaseException as error:
        # A full disk, a bad pixel found while reading, Ctrl-C: no empty folder left behind.
        for folder in created:
            try:
                folder.rmdir()  # only if still empty: maps already written stay
            except OSError:
                break
        if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError)):
            target = error.filename or out_dir
            raise DGCError(f"{target}: could not write the output: {error.strerror or error}") from error
        raise
    return 0


def _segment_all(
    args: argparse.Namespace,
    model: DGCModel,
    mapping: ClassMapping | None,
    cubes: list,
    planned: list[tuple[dict[str, Path], Path | None]],
    probability_format: str,
) -> None:
    """Segment every cube and write its maps (files written atomically, one cube at a time)."""
    from napari_dgc.analysis.export import cluster_legend, write_class_map, write_label_map
    from napari_dgc.atomic import atomic_write_bytes
    from napari_dgc.inference.segmentation import segment_cube

    legend = cluster_legend(model.config.n_clusters)
    for cube, (maps, probability_file) in zip(cubes, planned):
        started = time.perf_counter()
        result = segment_cube(
            model,
            cube,
            tile=args.tile,
            workers=args.workers,
            return_probabilities=probability_file is not None,
        )
        written = write_label_map(maps["labels"], result.labels, legend, overwrite=True)
        if mapping is not None:
            written += write_class_map(maps["classes"], mapping.apply(result.labels), mapping, overwrite=True)
        if probability_file is not None:
            atomic_write_bytes(probability_file, _probability_bytes(result.probabilities, probability_format))
            written.append(probability_file)
        rows, cols = cube.shape_hw
        print(
            f"{cube.path} ({rows}x{cols}) -> {', '.join(p.name for p in written)} "
            f"[{time.perf_counter() - started:.1f} s]"
        )
