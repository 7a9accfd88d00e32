"""``napari-dgc spectra LABELS CUBE --out CSV``: mean ± std spectrum of every cluster (and class).

::

    napari-dgc spectra labels/scene_labels.tif scene.hdr --out spectra.csv
    napari-dgc spectra labels/scene_labels.tif scene.hdr --mapping merge.json --out spectra.csv
    napari-dgc spectra labels/scene_labels.tif scene.hdr --run RUN --out spectra.csv

``LABELS`` is a cluster map as ``napari-dgc segment`` writes it (ids ``0..K-1``) of ``CUBE``
(any format :func:`napari_dgc.io.open_cube` reads; ``--key``/``--shape`` as for ``info``). The
CSV has one row per cluster (and, with ``--mapping``, per class) and band: ``kind, id, name,
pixels, band, wavelength_nm, mean, std`` (:func:`napari_dgc.analysis.export.spectra_csv_text`).
The cube is read one block of rows at a time; the CSV is written atomically. With ``--run``
the cube is prepared as that run's cubes were (band crop, white/dark references, binning), so
the spectra are those of the pixels the model saw and the map of a binned run fits the cube.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_dgc._cli import add_cube_open_options
from napari_dgc.errors import DGCError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``spectra`` sub-command."""
    parser = subparsers.add_parser(
        "spectra",
        usage="napari-dgc spectra LABELS CUBE --out CSV [--mapping JSON] [--run RUN] [options]",
        help="mean ± std spectrum of every cluster (and class) of a cluster map, as CSV",
        description=(
            "Write the pixel count and the mean and standard deviation spectrum, with the "
            "wavelengths, of every cluster of a cluster map (as napari-dgc segment writes) of a "
            "cube; with --mapping also of every class (its clusters' pixels together)."
        ),
    )
    parser.add_argument("labels", metavar="LABELS", help="cluster map (ids 0..K-1) of the cube")
    parser.add_argument("cube", metavar="CUBE", help="the cube (any format)")
    parser.add_argument("--out", required=True, metavar="CSV", help="CSV file to write")
    parser.add_argument("--mapping", metavar="JSON", help="class mapping: also one row per class and band")
    parser.add_argument(
        "--n-clusters", type=int, metavar="K", help="clusters of the model (default: from the mapping or map)"
    )
    parser.add_argument(
        "--run",
        metavar="RUN",
        help="prepare the cube as this training run's cubes were (band crop, references, binning)",
    )
    add_cube_open_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compute and write the spectra; return the exit code (bad input raises DGCError)."""
    from napari_dgc.analysis.classes import ClassMapping, check_cluster_count, cluster_statistics
    from napari_dgc.analysis.export import write_spectra_csv
    from napari_dgc.analysis.masks import read_label_image
    from napari_dgc.config import MAX_CLUSTERS
    from napari_dgc.errors import MappingError
    from napari_dgc.io import open_cube

    out = Path(args.out)
    if not out.parent.is_dir():
        raise DGCError(f"--out {out}: the folder {out.parent} does not exist (it is not created)")
    if out.exists() and not args.overwrite:
        raise DGCError(f"{out} exists; pass --overwrite to replace it")
    labels = read_label_image(args.labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DGCError(f"{args.labels}: a cluster map must be a 2-D image of non-negative integer ids")
    if labels.size and labels.max() >= MAX_CLUSTERS:
        raise MappingError(
            f"{args.labels}: holds cluster id {int(labels.max())}; "
            f"cluster maps hold ids 0..{MAX_CLUSTERS - 1}"
        )
    mapping = None
    n_clusters = args.n_clusters
    if n_clusters is not None:
        check_cluster_count(n_clusters, "--n-clusters: ")
    if args.mapping:
        mapping = ClassMapping.load(args.mapping, n_clusters=n_clusters)
        n_clusters = mapping.n_clusters
    if n_clusters is None:
        n_clusters = int(labels.max()) + 1 if labels.size else 1
    cube = open_cube(args.cube, key=args.key, shape=tuple(args.shape) if args.shape else None)
    if args.run is not None:
        from napari_dgc.run_folder import RunDirectory
        from napari_dgc.run_folder.preparation_file import run_preparation

        cube = run_preparation(RunDirectory.open(args.run)).apply(cube)
    if tuple(cube.shape_hw) != labels.shape:
        raise DGCError(
            f"{args.labels}: the map is {labels.shape[0]}x{labels.shape[1]}, the cube "
            f"{cube.shape_hw[0]}x{cube.shape_hw[1]}"
        )
    statistics = cluster_statistics(cube, labels.astype("int64"), n_clusters)
    write_spectra_csv(out, statistics, cube.wavelengths, mapping, overwrite=args.overwrite)
    groups = f"{n_clusters} clusters" + (f" and {len(mapping.classes)} classes" if mapping else "")
    print(f"wrote {out} ({groups} x {cube.n_bands} bands)")
    return 0
