"""Navigable granularity: a K=6 leaf run slid down its merge tree to 2 and 3 classes.

Trains DGC with ``K=6`` (:func:`napari_dgc.training.loop.train`, the project's defaults except
``--steps``, ``--checkpoint-every`` and ``--seed``) on ``--leaf-train`` synthetic leaf scenes,
segments ``--leaf-test`` *other* scenes with every checkpoint of the selected start, builds the
merge tree of :mod:`napari_dgc.analysis.merge_tree` from the pooled statistics of those scenes
(what the merge panel's granularity slider does: no ground truth) and slides it

* to **2** classes: background–tissue (B–T) mean IoU, lesions counted as tissue;
* to **3** classes: background / tissue / lesion IoU.

The tree's classes carry no names, so each level's classes are matched one-to-one to the true
classes (Hungarian), as a person names them. Reported next to the K=6 clusters merged by the
truth (each cluster to the class it overlaps most: the best any merge of these clusters can do)
and k-means on per-pixel L2-normalised spectra at K=2 and K=3.

Example (several minutes on 2 cores)::

    python benchmarks/granularity.py --steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from quality import make_leaf  # the benchmarks folder is the script's own

K = 6


def class_iou(
    truth: list[np.ndarray], predicted: list[np.ndarray], n_classes: int, n_predicted: int
) -> np.ndarray:
    """IoU of each true class after matching the predicted classes one-to-one (Hungarian)."""
    from napari_dgc.metrics import confusion_matrix, hungarian_mapping, iou_per_class, mapped_confusion

    confusion = confusion_matrix(
        np.concatenate([t.ravel() for t in truth]),
        np.concatenate([p.ravel() for p in predicted]),
        n_classes=n_classes,
        n_predicted=n_predicted,
    )
    return iou_per_class(mapped_confusion(confusion, hungarian_mapping(confusion))[:, :n_classes])


def merged_by_truth_iou(truth: list[np.ndarray], clusters: list[np.ndarray], n_classes: int) -> np.ndarray:
    """IoU of each class when every cluster goes to the class it overlaps most (the best merge)."""
    from napari_dgc.metrics import confusion_matrix, iou_per_class, many_to_one_mapping, mapped_confusion

    confusion = confusion_matrix(
        np.concatenate([t.ravel() for t in truth]),
        np.concatenate([c.ravel() for c in clusters]),
        n_classes=n_classes,
        n_predicted=K,
    )
    return iou_per_class(mapped_confusion(confusion, many_to_one_mapping(confusion))[:, :n_classes])


def slide(cubes: list[np.ndarray], clusters: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """Scores of the merge tree's levels 2 and 3 for one checkpoint's clusters."""
    from napari_dgc.analysis.classes import ClusterStatistics, cluster_statistics
    from napari_dgc.analysis.merge_tree import merge_tree

    pooled = ClusterStatistics.pooled(cluster_statistics(c, labels, K) for c, labels in zip(cubes, clusters))
    tree = merge_tree(pooled)
    tissue = [np.minimum(t, 1) for t in truths]
    two = [tree.mapping_at(2)[labels] for labels in clusters]
    three = [tree.mapping_at(3)[labels] for labels in clusters] if tree.n_active >= 3 else None
    bt = class_iou(tissue, two, 2, 2)
    result = {"active": tree.n_active, "bt_miou": float(bt.mean()), "iou_bg": float(bt[0])}
    result["iou_tissue"] = float(bt[1])
    if three is not None:
        iou = class_iou(truths, three, 3, 3)
        result.update(miou3=float(iou.mean()), lesion_iou=float(iou[2]))
    result["oracle_bt_miou"] = float(merged_by_truth_iou(tissue, clusters, 2).mean())
    result["oracle_lesion_iou"] = float(merged_by_truth_iou(truths, clusters, 3)[2])
    return result


def kmeans_l2(cubes: list[np.ndarray], truths: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """IoU per class of k-means on per-pixel L2-normalised spectra (matched one-to-one)."""
    from sklearn.cluster import KMeans

    flat = [c.reshape(-1, c.shape[-1]).astype(np.float64) for c in cubes]
    stacked = np.concatenate(flat)
    stacked /= np.linalg.norm(stacked, axis=1, keepdims=True) + 1e-12
    labels = KMeans(k, n_init=4, random_state=seed).fit_predict(stacked)
    split = np.split(labels, np.cumsum([f.shape[0] for f in flat])[:-1])
    predicted = [s.reshape(c.shape[:2]) for s, c in zip(split, cubes)]
    truth = [np.minimum(t, 1) for t in truths] if k == 2 else truths
    return class_iou(truth, predicted, k, k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leaf-size", type=int, default=128, help="rows = cols of leaf scenes")
    parser.add_argument("--leaf-bands", type=int, default=301)
    parser.add_argument("--leaf-train", type=int, default=4, help="leaf scenes to train on")
    parser.add_argument("--leaf-test", type=int, default=2, help="other leaf scenes to score")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--save", type=Path, help="also save every checkpoint's test-scene clusters (.npz)")
    args = parser.parse_args(argv)

    import torch

    from napari_dgc.config import TrainConfig
    from napari_dgc.inference.segmentation import segment_cube
    from napari_dgc.run_folder import RunDirectory
    from napari_dgc.training.events import FinishedEvent
    from napari_dgc.training.loop import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="napari-dgc-granularity-") as scratch_name:
        scratch = Path(scratch_name)
        leaf = make_leaf(scratch, args.leaf_size, args.leaf_bands, args.leaf_train, args.leaf_test)
        truths = leaf.test_truths[3]
        config = TrainConfig().with_settings(
            {
                "model.n_clusters": K,
                "steps": args.steps,
                "checkpoint_every": args.checkpoint_every,
                "seed": args.seed,
            }
        )
        started = time.perf_counter()
        for event in train([str(f) for f in leaf.train_files], config, scratch / "run"):
            if isinstance(event, FinishedEvent):
                break
        print(f"# trained K={K}, {args.steps} steps, seed {args.seed}: {time.perf_counter() - started:.0f} s")
        run = RunDirectory.open(scratch / "run")
        rows, saved = [], {}
        for info in run.checkpoints(start=run.selected_start or 0):
            model = run.load_model(info.checkpoint_id)
            clusters = [segment_cube(model, cube).labels for cube in leaf.test_cubes]
            rows.append((info.step, slide(leaf.test_cubes, clusters, truths)))
            saved.update({f"step{info.step}_scene{i}": labels for i, labels in enumerate(clusters)})
        if args.save:
            np.savez_compressed(args.save, **saved)

    print(
        "\n| checkpoint step | active clusters | level 2: B–T mIoU | IoU bg | IoU tissue "
        "| level 3: mIoU | lesion IoU | K=6 merged by truth: B–T mIoU | lesion IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for step, r in rows:
        print(
            f"| {step} | {r['active']} | {r['bt_miou']:.3f} | {r['iou_bg']:.3f} | {r['iou_tissue']:.3f} "
            f"| {r.get('miou3', float('nan')):.3f} | {r.get('lesion_iou', float('nan')):.3f} "
            f"| {r['oracle_bt_miou']:.3f} | {r['oracle_lesion_iou']:.3f} |"
        )
    two, three = (
        kmeans_l2(leaf.test_cubes, truths, 2, args.seed),
        kmeans_l2(leaf.test_cubes, truths, 3, args.seed),
    )
    print(
        f"\nk-means, L2-normalised spectra: K=2 B–T mIoU {two.mean():.3f}; "
        f"K=3 mIoU {three.mean():.3f}, lesion IoU {three[2]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
