"""Synthetic leaf scenes: generation time, peak memory and how hard they are for k-means.

Usage::

    python benchmarks/synthetic_scene.py [--seeds 0 1 2 3 4] [--large]

For each seed, renders the default scene (256 x 256 x 301) and clusters its spectra with
k-means (k = 2, scikit-learn, ``n_init=3``) on raw spectra, on L2-normalised spectra and on
per-band standardised spectra, and a plain NDVI > 0.3 threshold; prints the background / tissue
IoU and their mean (tissue = healthy + lesion, best cluster-to-class pairing). ``--large`` also
times one 1000 x 1000 x 301 scene and reports the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from sklearn.cluster import KMeans

from napari_dgc.datasets.synthetic import make_leaf_scene


def background_tissue_iou(predicted_tissue: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(background IoU, tissue IoU) for the better pairing of a two-way split with the truth."""
    truth = labels.ravel() > 0
    best = (0.0, 0.0)
    for tissue in (predicted_tissue.ravel(), ~predicted_tissue.ravel()):
        ious = (
            float(np.sum(~tissue & ~truth) / np.sum(~tissue | ~truth)),
            float(np.sum(tissue & truth) / np.sum(tissue | truth)),
        )
        if sum(ious) > sum(best):
            best = ious
    return best


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--large", action="store_true", help="also time a 1000 x 1000 x 301 scene")
    args = parser.parse_args(argv)

    print("seed  time_s  features  IoU_background  IoU_tissue  mean")
    means: dict[str, list[float]] = {}
    for seed in args.seeds:
        start = time.perf_counter()
        scene = make_leaf_scene(seed=seed)
        elapsed = time.perf_counter() - start
        spectra = scene.cube.reshape(-1, scene.cube.shape[-1])
        wl = scene.wavelengths
        red, nir = (int(np.argmin(np.abs(wl - nm))) for nm in (670, 800))
        splits = {}
        for name, features in (
            ("raw", spectra),
            ("l2", spectra / np.linalg.norm(spectra, axis=1, keepdims=True)),
            ("std", (spectra - spectra.mean(0)) / spectra.std(0)),
        ):
            splits[f"kmeans-{name}"] = KMeans(2, n_init=3, random_state=0).fit_predict(features) == 1
        splits["ndvi>0.3"] = (spectra[:, nir] - spectra[:, red]) / (spectra[:, nir] + spectra[:, red]) > 0.3
        for name, split in splits.items():
            background, tissue = background_tissue_iou(split, scene.labels)
            mean = (background + tissue) / 2
            means.setdefault(name, []).append(mean)
            print(f"{seed:4d}  {elapsed:6.2f}  {name:10s}  {background:.3f}  {tissue:.3f}  {mean:.3f}")
    for name, values in means.items():
        print(
            f"mean over seeds  {name:10s}  {np.mean(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )

    if args.large:
        before = _peak_rss_mib()
        start = time.perf_counter()
        scene = make_leaf_scene(1000, 1000, 301, seed=0)
        elapsed = time.perf_counter() - start
        print(
            f"1000 x 1000 x 301: {elapsed:.1f} s, cube {scene.cube.nbytes / 2**20:.0f} MiB, "
            f"peak RSS {_peak_rss_mib():.0f} MiB (was {before:.0f} MiB before)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
