"""Quick quality checks of the training defaults (the formal benchmark is benchmarks/quality.py).

Trains with :class:`napari_dgc.training.loop.Trainer` (no run folder) and every ``--eval-every`` steps
segments every scene whole and prints: active clusters, loss terms, and the scores against the
ground truth — background-vs-tissue mean IoU after many-to-one matching (``bt_iou``: every
cluster goes to the B or T class it overlaps most) and NMI against the full ground truth.

Usage::

    python benchmarks/tune_quality.py --dataset synthetic --clusters 2 --steps 300
    python benchmarks/tune_quality.py --dataset samson --clusters 3 --crop 32 --set model.brightness_norm=true
    python benchmarks/tune_quality.py --set losses.weight_anchor=0 --set losses.weight_consistency=0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_dgc.config import TrainConfig, parse_setting
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.metrics import evaluate_clustering
from napari_dgc.model.network import DGCModel
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import PairStream, SampledCube
from napari_dgc.training.trainer import Trainer

SAMSON = Path(__file__).resolve().parents[2] / "shared" / "data" / "samson" / "Samson.mat"


def load_dataset(name: str, n_cubes: int, size: int, bands: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cubes (band-last float32) and ground-truth label maps."""
    if name == "synthetic":
        scenes = [make_leaf_scene(size, size, bands, seed=seed) for seed in range(n_cubes)]
        return [s.cube for s in scenes], [s.labels.astype(np.int64) for s in scenes]
    if name == "samson":
        from scipy.io import loadmat

        if not SAMSON.exists():
            raise SystemExit(f"Samson not found at {SAMSON}")
        data = loadmat(SAMSON)
        cube = data["Y"].T.reshape(95, 95, 156, order="F").astype(np.float32)
        return [cube], [data["S_GT"].argmax(-1).astype(np.int64)]
    raise SystemExit(f"unknown dataset {name}")


def score(
    model: DGCModel,
    cubes: list[np.ndarray],
    truths: list[np.ndarray],
    dataset: str,
    embedding_kmeans: bool = False,
) -> dict:
    """Scores of whole-scene predictions pooled over the dataset.

    With ``embedding_kmeans`` also ``emb_km_nmi``: NMI of k-means (K clusters) on the
    embeddings themselves, which tells a poor embedding from poorly placed centroids.
    """
    model.eval()
    with torch.no_grad():
        embeddings = [model.embed(torch.from_numpy(cube).permute(2, 0, 1).unsqueeze(0))[0] for cube in cubes]
    predictions = [torch.einsum("dhw,kd->khw", z, model.centroids).argmax(dim=0).numpy() for z in embeddings]
    clusters = np.concatenate([p.ravel() for p in predictions])
    truth = np.concatenate([t.ravel() for t in truths])
    full = evaluate_clustering(truth, clusters, n_clusters=model.n_clusters)
    result = {"nmi": full.nmi, "acc": full.accuracy}
    if embedding_kmeans:
        from sklearn.cluster import KMeans

        flat = np.concatenate([z.reshape(z.shape[0], -1).T.numpy() for z in embeddings])
        labels = KMeans(model.n_clusters, n_init=2, random_state=0).fit_predict(flat)
        result["emb_km_nmi"] = evaluate_clustering(truth, labels, n_clusters=model.n_clusters).nmi
    if dataset == "synthetic":
        bt = evaluate_clustering((truth > 0).astype(np.int64), clusters, n_clusters=model.n_clusters)
        result["bt_iou"] = bt.many_to_one_mean_iou
    return result


def main() -> None:
    """Train, evaluate periodically, print a line per evaluation and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "samson"])
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cubes", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--embedding-kmeans", action="store_true", help="also score k-means on the embeddings (emb_km_nmi)"
    )
    parser.add_argument("--set", action="append", default=[], help="TrainConfig override key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cubes, truths = load_dataset(args.dataset, args.cubes, args.size, args.bands)
    for seed in [int(s) for s in args.seeds.split(",")]:
        # One Trainer is one start: the start selection is part of training.loop.train()
        # (benchmarks/quality.py measures it).
        config = TrainConfig().with_settings(
            {
                "model.n_clusters": args.clusters,
                "steps": args.steps,
                "data.crop_size": args.crop,
                "seed": seed,
                "device": "cpu",
                "starts.count": 1,
                **dict(parse_setting(text) for text in args.set),
            }
        )
        if config.starts.count > 1:
            raise SystemExit(
                "starts.count: the start selection is part of training.loop.train(); this "
                "script drives one Trainer (use benchmarks/quality.py --set starts.count=N)"
            )
        sources = [SampledCube(cube, f"cube {i}") for i, cube in enumerate(cubes)]
        stream = PairStream.for_config(sources, config.data, seed)
        torch.manual_seed(seed)
        model = DGCModel(cubes[0].shape[-1], config.model)
        stats = compute_band_statistics(sources, config.model.brightness_norm)
        model.set_normalization(stats.offset, stats.scale, stats.brightness_floor)
        trainer = Trainer(model, stream, config, torch.device("cpu"))
        best, started, history = None, time.perf_counter(), []
        for step in range(1, args.steps + 1):
            result = trainer.step()
            history.append(result.active_clusters)
            if step % args.eval_every == 0 or step == args.steps:
                scores = score(trainer.checkpoint_model, cubes, truths, args.dataset, args.embedding_kmeans)
                key = "bt_iou" if "bt_iou" in scores else "nmi"
                if best is None or scores[key] > best[1][key]:
                    best = (step, scores)
                losses = " ".join(f"{k}={v:.3f}" for k, v in result.losses.items())
                print(
                    f"seed {seed} step {step:5d} {time.perf_counter() - started:6.0f}s active "
                    f"{result.active_clusters} (min over window {min(history)}) "
                    + " ".join(f"{k}={v:.3f}" for k, v in scores.items())
                    + f" | {losses}",
                    flush=True,
                )
                history = []
        print(
            f"seed {seed} BEST step {best[0]}: "
            + " ".join(f"{k}={v:.3f}" for k, v in best[1].items())
            + " | FINAL "
            + " ".join(f"{k}={v:.3f}" for k, v in scores.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
