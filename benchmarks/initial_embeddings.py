"""How much spectral structure the *untrained* model's embeddings keep, per initialisation.

For each seed, builds a model at the default architecture with the dataset-level normalisation,
then scores k-means (K clusters) against the ground truth on the embeddings of every scene:
with PyTorch's default initialisation, after the data-dependent initialisation
(:meth:`DGCModel.initialize_from_data` on the first scene), and for the per-pixel spectral
features alone. A clustering can only be as good as the geometry it starts from; see
docs/training.md, "Quality, third pass".

Usage::

    python benchmarks/initial_embeddings.py --dataset samson --clusters 3
    python benchmarks/initial_embeddings.py --dataset synthetic --clusters 2 --spatial-init default
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from tune_quality import load_dataset  # benchmarks/ is on sys.path when run as a script

from napari_dgc.config import ModelConfig
from napari_dgc.metrics import evaluate_clustering
from napari_dgc.model.network import DGCModel
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import SampledCube


def kmeans_nmi(features: torch.Tensor, truth: np.ndarray, n_clusters: int) -> float:
    """NMI of k-means on ``features`` ``(pixels, D)`` against ``truth``."""
    labels = KMeans(n_clusters, n_init=3, random_state=0).fit_predict(features.numpy())
    return evaluate_clustering(truth, labels, n_clusters=n_clusters).nmi


def main() -> None:
    """Print one line per seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="samson", choices=["synthetic", "samson"])
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--spatial-init", default="identity", choices=["identity", "default"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cubes, truths = load_dataset(args.dataset, 3, 128, 64)
    truth = np.concatenate([t.ravel() for t in truths])
    scenes = [torch.from_numpy(cube).permute(2, 0, 1).unsqueeze(0) for cube in cubes]
    config = ModelConfig(n_clusters=args.clusters, spatial_init=args.spatial_init)
    statistics = compute_band_statistics(
        [SampledCube(c, str(i)) for i, c in enumerate(cubes)], config.brightness_norm
    )
    print(f"{args.dataset}, K={args.clusters}, spatial_init={args.spatial_init}: k-means NMI on")
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        model = DGCModel(cubes[0].shape[-1], config)
        model.set_normalization(statistics.offset, statistics.scale, statistics.brightness_floor)
        with torch.no_grad():
            default = torch.cat([model.embed(x)[0].flatten(1).T for x in scenes])
            model.initialize_from_data(scenes[0])
            data = torch.cat([model.embed(x)[0].flatten(1).T for x in scenes])
            spectral = torch.cat(
                [
                    F.normalize(model.band_features(model.spectral_input(x[0].flatten(1).T)), dim=1)
                    for x in scenes
                ]
            )
        print(
            f"seed {seed}: default-init embeddings {kmeans_nmi(default, truth, args.clusters):.3f}"
            f" | data-init embeddings {kmeans_nmi(data, truth, args.clusters):.3f}"
            f" | data-init spectral features {kmeans_nmi(spectral, truth, args.clusters):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
