"""``napari-dgc evaluate LABELS MASK``: IoU of merged clusters against ground-truth masks.

``LABELS`` and ``MASK`` are either two files (one cube) or two folders, whose files are paired
by name stem (``leaf_labels.tif`` with ``leaf_mask.png`` or ``leaf.json``; see
:mod:`napari_dgc.analysis.masks`). Cluster maps hold cluster ids ``0..K-1`` (as ``napari-dgc segment``
writes them). Without ``--mapping`` the best automatic mapping is used and the output says so.

Every input is checked before anything is allocated or written: cluster ids and
``--n-clusters`` must lie within :data:`~napari_dgc.config.MAX_CLUSTERS`, inputs must be
regular files or folders, and ``--json``/``--csv`` must go into an existing folder (no folder
is created).
"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import numpy as np

from napari_dgc.errors import DGCError, MappingError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    from napari_dgc.analysis.evaluation import SUGGESTION_METHODS

    parser = subparsers.add_parser(
        "evaluate",
        help="per-class IoU, mean IoU and confusion of merged clusters against masks",
        description=(
            "Merge cluster label maps into classes with a mapping file and score them against "
            "ground-truth masks (PNG/TIFF/NPY: values 0..254 are classes, 0 background, 255 "
            "ignore, named by the mask's .legend.json or --mask-classes; or LabelMe JSON), per "
            "cube and pooled. A class map written by napari-dgc is a mask too (its unassigned "
            "pixels are ignored). Without --mapping, the best automatic (Hungarian / many-to-one) "
            "mapping is suggested and used."
        ),
    )
    parser.add_argument("labels", metavar="LABELS", help="cluster label map, or a folder of them")
    parser.add_argument("mask", metavar="MASK", help="mask file, or a folder of masks")
    parser.add_argument(
        "--mapping", metavar="JSON", help="class mapping (napari-dgc or {label: [cluster ids]} form)"
    )
    parser.add_argument("--n-clusters", type=int, metavar="K", help="number of clusters of the model")
    parser.add_argument(
        "--suggest",
        choices=SUGGESTION_METHODS,
        default="auto",
        help="automatic mapping used without --mapping (default: auto)",
    )
    parser.add_argument(
        "--mask-classes",
        metavar="NAMES",
        help="comma-separated class names of mask values 0, 1, ... (default: the mask's legend "
        "file, else background,tissue,lesion then 'class N')",
    )
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    parser.add_argument("--csv", metavar="OUT", help="write per-class IoU rows as CSV")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--csv files")
    parser.set_defaults(handler=_run)


def _files(argument: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    path = Path(argument)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what} file or folder")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DGCError(f"{path}: not a regular file or folder (a FIFO, socket or device); not read")
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.endswith(".legend.json")
    )
    if not files:
        raise DGCError(f"{path}: holds no {what} files ({', '.join(suffixes)})")
    return files


def _pair(label_files: list[Path], mask_files: list[Path]) -> dict[str, tuple[Path, Path]]:
    from napari_dgc.analysis.masks import mask_stem, match_masks
    from napari_dgc.errors import MaskError

    if len(label_files) == 1 and len(mask_files) == 1:
        return {mask_stem(label_files[0]): (label_files[0], mask_files[0])}
    by_cube = {mask_stem(p): p for p in label_files}
    matched, unmatched = match_masks(mask_files, by_cube)
    if not matched:
        raise MaskError(f"no mask file matches a label file by name ({sorted(by_cube)})")
    if unmatched:
        print(f"note: masks without a label map: {', '.join(p.name for p in unmatched)}")
    return {cube: (by_cube[cube], mask) for cube, mask in matched.items()}


def _read_cluster_map(path: Path) -> np.ndarray:
    from napari_dgc.analysis.masks import read_label_image
    from napari_dgc.config import MAX_CLUSTERS

    labels = read_label_image(path)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DGCError(f"{path}: a cluster map must be a 2-D image of non-negative integer ids")
    # Every table and matrix is sized by the largest id: refuse ids no model produces before
    # one is allocated (an id of 10^12 would ask for terabytes).
    if labels.size and labels.max() >= MAX_CLUSTERS:
        raise MappingError(
            f"{path}: holds cluster id {int(labels.max())}; cluster maps hold ids 0..{MAX_CLUSTERS - 1}"
        )
    return labels.astype(np.int64)


def _cluster_count(args: argparse.Namespace, cluster_maps: dict[str, np.ndarray]) -> int:
    from napari_dgc.analysis.classes import check_cluster_count
    from napari_dgc.safe_json import read_json

    if args.n_clusters is not None:
        check_cluster_count(args.n_clusters, "--n-clusters: ")
        return args.n_clusters
    if args.mapping:
        document = read_json(args.mapping, error=MappingError, what="class mapping")
        # A reference-form mapping ({label: [ids]}) may even have a label "n_clusters".
        if isinstance(document, dict) and isinstance(document.get("n_clusters"), int):
            check_cluster_count(document["n_clusters"], f"{args.mapping}: ")
            return document["n_clusters"]
    return max(int(labels.max()) for labels in cluster_maps.values() if labels.size) + 1


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable report paths before any work: nothing is created, not even a folder."""
    for option, output in (("--json", args.json), ("--csv", args.csv)):
        if not output:
            continue
        path = Path(output)
        folder = path.parent
        if not folder.is_dir():
            raise DGCError(f"{option} {path}: the folder {folder} does not exist (it is not created)")
        if path.is_dir():
            raise DGCError(f"{option} {path}: is a folder, not a file")
        if path.exists() and not args.overwrite:
            raise DGCError(f"{output} exists; pass --overwrite to replace it")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise DGCError(f"{option} {path}: not a regular file; not replaced")


def _run(args: argparse.Namespace) -> int:
    from napari_dgc.analysis.classes import ClassMapping
    from napari_dgc.analysis.evaluation import evaluate_classes, suggest_mapping, write_report
    from napari_dgc.analysis.export import LABEL_MAP_SUFFIXES
    from napari_dgc.analysis.masks import MASK_SUFFIXES, parse_legend, read_mask

    _check_outputs(args)
    legend = parse_legend(args.mask_classes) if args.mask_classes else None
    pairs = _pair(
        _files(args.labels, LABEL_MAP_SUFFIXES, "label map"), _files(args.mask, MASK_SUFFIXES, "mask")
    )
    cluster_maps = {cube: _read_cluster_map(labels) for cube, (labels, _) in pairs.items()}
    masks = {
        cube: read_mask(mask, shape=cluster_maps[cube].shape, legend=legend)
        for cube, (_, mask) in pairs.items()
    }
    n_clusters = _cluster_count(args, cluster_maps)
    if args.mapping:
        mapping = ClassMapping.load(args.mapping, n_clusters=n_clusters)
        report = evaluate_classes(cluster_maps, masks, mapping, mapping_source=str(args.mapping))
        print(f"Mapping: {args.mapping}")
    else:
        mapping, method, notes = suggest_mapping(cluster_maps, masks, n_clusters, method=args.suggest)
        report = evaluate_classes(cluster_maps, masks, mapping, mapping_source=f"suggested ({method})")
        report.notes[:0] = notes
        print(
            f"No --mapping given: scores use the suggested {method} mapping (a suggestion, not your merge):"
        )
    for cls in mapping.classes:
        print(f"  {cls.name}: clusters {', '.join(map(str, cls.clusters)) or '(none)'}")
    print()
    print(report.format_table())
    for note in report.notes:
        print(f"note: {note}")
    written = write_report(report, json_path=args.json, csv_path=args.csv, overwrite=args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return 0
