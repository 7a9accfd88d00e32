"""``napari-dgc segment RUN CUBE... --out DIR``: cluster label maps of whole cubes, tile by tile.

For every cube it writes ``DIR/<name>_labels.<tif|png|npy>`` (int32 cluster ids; PNG: 8-bit with
a colour palette) and, with ``--probabilities``, ``DIR/<name>_probabilities.<tif|npy>``
(float32, ``K x rows x cols``; TIFF when the labels are PNG). Every file is written atomically.
All cubes are opened and checked against the model before the first one is segmented.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from napari_dgc.errors import ConfigError

# Distinct colours for cluster ids 0..19 (tab20 order), repeated for larger K.
_PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.uint8,
)


def cluster_palette(n_clusters: int) -> np.ndarray:
    """``(n_clusters, 3)`` uint8 RGB colours for cluster ids (cycling after 20)."""
    return _PALETTE[np.arange(n_clusters) % len(_PALETTE)]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``segment`` sub-command."""
    parser = subparsers.add_parser(
        "segment",
        help="write cluster label maps of cubes with a trained run's checkpoint",
        description=(
            "Segment whole cubes of any size tile by tile with a checkpoint of a training run "
            "(default: the chosen checkpoint, else the latest) and write one label map per cube."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="training run folder (holds run.json)")
    parser.add_argument("cubes", nargs="+", metavar="CUBE", help="cubes to segment (any format)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--checkpoint", metavar="ID", help="checkpoint id, e.g. step-000400")
    parser.add_argument(
        "--format", choices=("tif", "png", "npy"), default="tif", help="label file format"
    )
    parser.add_argument(
        "--tile", type=_positive_int, default=256, metavar="N",
        help="tile side in pixels (memory vs. speed; the labels do not depend on it)",
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="also write per-pixel cluster probabilities"
    )
    parser.set_defaults(handler=_run)


def _output_stem(cube_argument: str) -> str:
    path = Path(cube_argument)
    return path.name if path.is_dir() else path.stem


def _encode(array: np.ndarray, file_format: str, palette: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    if file_format == "npy":
        np.save(buffer, array, allow_pickle=False)
    elif file_format == "tif":
        import tifffile

        tifffile.imwrite(buffer, array)
    else:
        from PIL import Image

        image = Image.fromarray(array.astype(np.uint8), mode="P")
        image.putpalette(palette.ravel().tolist())
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _run(args: argparse.Namespace) -> int:
    from napari_dgc.atomic import atomic_write_bytes
    from napari_dgc.io import open_cube
    from napari_dgc.run import RunDirectory
    from napari_dgc.segmentation import segment_cube

    run = RunDirectory.open(args.run)
    model = run.load_model(args.checkpoint)
    n_clusters = model.config.n_clusters
    if args.format == "png" and n_clusters > 256:
        raise ConfigError(f"PNG label maps hold at most 256 clusters, the model has {n_clusters}")

    stems = [_output_stem(name) for name in args.cubes]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ConfigError(f"several cubes would write the same output name: {duplicates}")
    cubes = [open_cube(name) for name in args.cubes]
    for cube in cubes:
        if cube.n_bands != model.n_bands:
            raise ConfigError(
                f"{cube.path}: the cube has {cube.n_bands} bands, the model was trained on "
                f"{model.n_bands}"
            )
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    probability_format = "tif" if args.format == "png" else args.format
    for stem, cube in zip(stems, cubes):
        started = time.perf_counter()
        result = segment_cube(
            model, cube, tile=args.tile, return_probabilities=args.probabilities
        )
        label_file = out_dir / f"{stem}_labels.{args.format}"
        atomic_write_bytes(
            label_file, _encode(result.labels, args.format, cluster_palette(n_clusters))
        )
        written = [label_file]
        if result.probabilities is not None:
            probability_file = out_dir / f"{stem}_probabilities.{probability_format}"
            atomic_write_bytes(probability_file, _encode(result.probabilities, probability_format))
            written.append(probability_file)
        rows, cols = cube.shape_hw
        print(
            f"{cube.path} ({rows}x{cols}) -> {', '.join(map(str, written))} "
            f"[{time.perf_counter() - started:.1f} s]",
            file=sys.stdout,
        )
    return 0
