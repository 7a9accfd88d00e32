"""Which geometry of the spectra clusters well: k-means under each normalisation DGC could use.

DGC clusters unit-norm embeddings by cosine similarity, and its start and anchor term see the
spectra directly: a cosine k-means of the first batch's spectra (of the raw ones since the
eighth pass; this script is what chose them). This script scores k-means, with the ground
truth of ``benchmarks/quality.py``'s datasets, on

* ``raw, cosine``: the raw spectra, per-pixel L2-normalised (quality.py's "k-means L2");
* ``inputs, Euclidean``: the model's inputs (each pixel divided by its band mean, then
  standardised per band with dataset statistics), Euclidean k-means;
* ``inputs, cosine``: the same inputs L2-normalised first (what the spectral start and the
  retired fidelity term used before the eighth pass);
* ``inputs uncentred, cosine``: brightness-normalised and divided by the per-band spread, not
  centred.

No training: a few seconds per dataset. Example::

    python benchmarks/input_geometry.py --datasets samson leaf
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from quality import DEFAULT_DATA, Dataset, load_samson, make_leaf, score


def _unit_rows(pixels: np.ndarray) -> np.ndarray:
    return pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)


def geometries(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The pixels ``(N, bands)`` under each normalisation, named as in the module docstring."""
    brightness = np.maximum(np.abs(pixels.mean(axis=1, keepdims=True)), 1e-12)
    relative = pixels / brightness
    spread = relative.std(axis=0) + 1e-12
    inputs = (relative - relative.mean(axis=0)) / spread
    return {
        "raw, cosine": _unit_rows(pixels),
        "inputs, Euclidean": inputs,
        "inputs, cosine": _unit_rows(inputs),
        "inputs uncentred, cosine": _unit_rows(relative / spread),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--datasets", nargs="+", choices=("samson", "leaf"), default=["samson", "leaf"])
    parser.add_argument("--leaf-size", type=int, default=128, help="rows = cols of leaf scenes")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    args = parser.parse_args(argv)

    from sklearn.cluster import KMeans

    print("| data | K | geometry | NMI | B–T mIoU | water IoU |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="napari-dgc-geometry-") as scratch_name:
        scratch = Path(scratch_name)
        datasets: list[Dataset] = []
        if "samson" in args.datasets:
            samson = load_samson(args.data, scratch)
            if samson is not None:
                datasets.append(samson)
        if "leaf" in args.datasets:
            datasets.append(make_leaf(scratch, args.leaf_size, 301, n_train=0, n_test=1))
        for dataset in datasets:
            shapes = [cube.shape[:2] for cube in dataset.test_cubes]
            stacked = np.concatenate(
                [cube.reshape(-1, cube.shape[-1]).astype(np.float64) for cube in dataset.test_cubes]
            )
            for k in sorted(dataset.test_truths):
                for name, points in geometries(stacked).items():
                    labels = KMeans(k, n_init=4, random_state=args.seed).fit_predict(points)
                    split = np.split(labels, np.cumsum([rows * cols for rows, cols in shapes])[:-1])
                    scores = score(dataset, k, [part.reshape(shape) for part, shape in zip(split, shapes)])
                    cells = [
                        f"{scores[key]:.3f}" if key in scores else "–"
                        for key in ("nmi", "bt_miou", "water_iou")
                    ]
                    print(f"| {dataset.name} | {k} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
