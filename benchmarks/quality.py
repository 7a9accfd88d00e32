"""Clustering quality of DGC next to k-means and a diagonal Gaussian mixture.

Datasets:

* **samson** (``DATA/samson/Samson.mat``, 95 x 95 x 156, airborne; truth = argmax of the
  abundances: soil / tree / water). K=3 is scored against the three classes; K=2 against
  water vs. rest.
* **microplastics** (``DATA/microplastics_grid_nir``, 20 x 20 x 256, close-range lab SWIR, ENVI):
  four polymer swatches; truth = the source pipeline's classifier output per polymer (four
  10 x 10 quadrants), so a sanity check, not annotation. K=4. The cube is smaller than the
  default crop: run it with ``--set data.crop_size=12``.
* **leaf**: synthetic close-range leaf scenes (:func:`napari_dgc.datasets.synthetic.make_leaf_scene`);
  DGC trains on ``--leaf-train`` scenes and every method is scored on ``--leaf-test`` other
  scenes. K=2 is scored against background vs. tissue (lesions count as tissue); K=3 and K=4
  against background / tissue / lesion. For every K the background–tissue (B–T) IoU is also
  given after mapping each cluster to the B–T class it overlaps most (how a person merges
  clusters by hand).

For each (dataset, K, seed) DGC trains with :func:`napari_dgc.training.loop.train` at the project's
default settings (except ``--steps`` and ``--checkpoint-every``), and every checkpoint is scored:
**best** is the checkpoint with the highest NMI (Samson) or B–T mean IoU (leaf) — chosen with
the ground truth, as a person picking the stopping point by eye would — and **final** is the
last one. k-means (``n_init=4``) and the diagonal GMM run on the same spectra, standardised per
band over the whole dataset (dataset-level statistics, as the model's own normalisation).
Scores are means ± standard deviations over the seeds; NMI, ARI, accuracy and mean IoU after
Hungarian matching (:func:`napari_dgc.metrics.evaluate_clustering`). Prints a markdown table.

Example (a few minutes on 2 cores)::

    python benchmarks/quality.py --steps 300 --checkpoint-every 50 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclasses.dataclass
class Dataset:
    """Cubes to train on, cubes to score on with their truths, and how to score."""

    name: str
    train_files: list[Path]
    test_cubes: list[np.ndarray]
    test_truths: dict[int, list[np.ndarray]]  # K -> truth maps scored by NMI/ARI/acc/mIoU
    bt_truths: list[np.ndarray] | None  # background (0) / tissue (1) maps, leaf scenes only


def load_samson(data_dir: Path, scratch: Path) -> Dataset | None:
    """Samson as a band-last .npy (the training input) with hard-label truths."""
    path = data_dir / "samson" / "Samson.mat"
    if not path.is_file():
        return None
    from scipy.io import loadmat

    content = loadmat(path)
    cube = content["Y"].T.reshape(95, 95, -1, order="F").astype(np.float32)
    truth = content["S_GT"].argmax(axis=-1).astype(np.int32)  # 0 soil, 1 tree, 2 water
    file = scratch / "samson.npy"
    np.save(file, cube)
    return Dataset("samson", [file], [cube], {3: [truth], 2: [(truth == 2).astype(np.int32)]}, None)


def load_microplastics(data_dir: Path) -> Dataset | None:
    """The microplastics swatch mosaic (ENVI, read as the CLI reads it) with its 4-class truth."""
    folder = data_dir / "microplastics_grid_nir"
    header = folder / "grid.hdr"
    if not header.is_file():
        return None
    from PIL import Image  # the masks are LZW TIFFs: Pillow reads them without imagecodecs

    from napari_dgc.io import open_cube

    cube = open_cube(header)
    pixels = np.asarray(cube.read_window(slice(None), slice(None)), dtype=np.float32)
    truth = np.full(pixels.shape[:2], -1, dtype=np.int32)
    for index, polymer in enumerate(("PP", "PE", "PS", "PET")):
        mask = np.asarray(Image.open(folder / "output" / f"sample_grid.dat_Comp.{polymer}.tiff"))
        truth[mask == 1] = index
    if (truth < 0).any():
        raise SystemExit(f"{folder}: some pixels have no polymer label")
    # K=8 (twice the polymers) is scored against the same four: does over-clustering hold?
    return Dataset("microplastics", [header], [pixels], {4: [truth], 8: [truth]}, None)


def make_leaf(scratch: Path, size: int, n_bands: int, n_train: int, n_test: int) -> Dataset:
    """Synthetic leaf scenes: ``n_train`` saved for training, ``n_test`` other seeds scored."""
    from napari_dgc.datasets.synthetic import make_leaf_scene

    files = []
    for seed in range(n_train):
        scene = make_leaf_scene(size, size, n_bands, seed=1000 + seed)
        files.append(scratch / f"leaf-{seed}.npy")
        np.save(files[-1], scene.cube)
    cubes, truths = [], []
    for seed in range(n_test):
        scene = make_leaf_scene(size, size, n_bands, seed=2000 + seed)
        cubes.append(scene.cube)
        truths.append(scene.labels.astype(np.int32))
    tissue = [np.minimum(t, 1) for t in truths]
    return Dataset("leaf", files, cubes, {2: tissue, 3: truths, 4: truths}, tissue)


def score(dataset: Dataset, k: int, predictions: list[np.ndarray]) -> dict[str, float]:
    """Pooled scores of the predictions over all test cubes."""
    from napari_dgc.metrics import (
        confusion_matrix,
        evaluate_clustering,
        many_to_one_mapping,
        mapped_confusion,
    )

    truth = np.concatenate([t.ravel() for t in dataset.test_truths[k]])
    pred = np.concatenate([p.ravel() for p in predictions])
    scores = evaluate_clustering(truth, pred, n_clusters=k)
    result = {"nmi": scores.nmi, "ari": scores.ari, "acc": scores.accuracy, "miou": scores.mean_iou}
    if dataset.bt_truths is not None:
        bt = np.concatenate([t.ravel() for t in dataset.bt_truths])
        confusion = confusion_matrix(bt, pred, n_classes=2, n_predicted=k)
        merged = mapped_confusion(confusion, many_to_one_mapping(confusion))[:, :2]
        inter = np.diag(merged)
        iou = inter / (confusion.sum(axis=1) + merged.sum(axis=0) - inter)
        result.update(bt_miou=float(iou.mean()), iou_bg=float(iou[0]), iou_tissue=float(iou[1]))
    elif k == 2:
        result["water_iou"] = float(scores.iou[1])
    return result


def standardised_pixels(cubes: list[np.ndarray]) -> list[np.ndarray]:
    """Pixels of each cube as rows, standardised per band with the statistics of all cubes."""
    flat = [c.reshape(-1, c.shape[-1]).astype(np.float64) for c in cubes]
    stacked = np.concatenate(flat)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-12
    return [(f - mean) / std for f in flat]


def l2_normalised_pixels(cubes: list[np.ndarray]) -> list[np.ndarray]:
    """Pixels of each cube as rows, each divided by its Euclidean norm (brightness removed)."""
    flat = [c.reshape(-1, c.shape[-1]).astype(np.float64) for c in cubes]
    return [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in flat]


BASELINES = ("k-means", "GMM (diag)", "k-means L2", "GMM (diag) L2")


def run_baselines(dataset: Dataset, k: int, seed: int) -> dict[str, dict[str, float]]:
    """k-means and diagonal GMM on standardised and on per-pixel L2-normalised spectra, fitted
    on all test pixels together.
    """
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    shapes = [c.shape[:2] for c in dataset.test_cubes]
    results = {}
    for suffix, pixels in (
        ("", standardised_pixels(dataset.test_cubes)),
        (" L2", l2_normalised_pixels(dataset.test_cubes)),
    ):
        stacked = np.concatenate(pixels)
        models = {
            "k-means": KMeans(k, n_init=4, random_state=seed),
            "GMM (diag)": GaussianMixture(k, covariance_type="diag", random_state=seed, n_init=2),
        }
        for name, model in models.items():
            labels = model.fit_predict(stacked)
            split = np.split(labels, np.cumsum([p.shape[0] for p in pixels])[:-1])
            results[name + suffix] = score(dataset, k, [s.reshape(h) for s, h in zip(split, shapes)])
    return results


#: a checkpoint within this much of the run's best has ignited (docs/training.md)
IGNITION_MARGIN = 0.05


def trajectory(curve: list[float]) -> dict[str, float]:
    """Stability figures of one run's checkpoint scores (in training order).

    ``ignition``: index of the first checkpoint within :data:`IGNITION_MARGIN` of the best;
    ``dip``: best minus the lowest score from ignition on (every checkpoint after ignition is
    within ``dip`` of the best); ``last_gap``: best minus the last score.
    """
    best = max(curve)
    ignition = next(i for i, value in enumerate(curve) if value >= best - IGNITION_MARGIN)
    return {"ignition": ignition, "dip": best - min(curve[ignition:]), "last_gap": best - curve[-1]}


def run_dgc(dataset: Dataset, k: int, seed: int, args, scratch: Path) -> dict:
    """Train once; score every checkpoint; return best, final and the training time."""
    from napari_dgc.config import TrainConfig, parse_setting
    from napari_dgc.inference.segmentation import segment_cube
    from napari_dgc.run_folder import RunDirectory
    from napari_dgc.training.events import FinishedEvent
    from napari_dgc.training.loop import train

    settings = {
        "model.n_clusters": k,
        "steps": args.steps,
        "checkpoint_every": args.checkpoint_every,
        "seed": seed,
        **dict(parse_setting(text) for text in args.set),
    }
    config = TrainConfig().with_settings(settings)
    run_dir = scratch / f"run-{dataset.name}-k{k}-s{seed}"
    started = time.perf_counter()
    for event in train([str(f) for f in dataset.train_files], config, run_dir):
        if isinstance(event, FinishedEvent):
            break
    train_seconds = time.perf_counter() - started
    run = RunDirectory.open(run_dir)
    key = "bt_miou" if dataset.bt_truths is not None else "nmi"
    per_checkpoint = []
    # Best and final are those of the start that continued (every start's own checkpoints
    # are in the run too; scoring them all would pick a start by the truth).
    for info in run.checkpoints(start=run.selected_start or 0):
        model = run.load_model(info.checkpoint_id)
        predictions = [segment_cube(model, cube).labels for cube in dataset.test_cubes]
        scores = score(dataset, k, predictions)
        scores["active"] = int(len(np.unique(np.concatenate([p.ravel() for p in predictions]))))
        per_checkpoint.append((info, scores))
    best_info, best = max(per_checkpoint, key=lambda item: item[1][key])
    final_info, final = per_checkpoint[-1]
    recommended_id = run.recommended_checkpoint.checkpoint_id
    recommended_info, recommended = next(
        item for item in per_checkpoint if item[0].checkpoint_id == recommended_id
    )
    start, scores = run.selected_start or 0, run.start_scores
    return {
        "best": best,
        "best_step": best_info.step,
        "final": final,
        "final_step": final_info.step,
        "recommended": recommended,
        "recommended_step": recommended_info.step,
        "trajectory": trajectory([s[key] for _, s in per_checkpoint]),
        "train_seconds": train_seconds,
        "start": start,
        "selection_scores": scores,
        # (step, score, active clusters, selection score, agreement with the previous checkpoint)
        "curve": [
            (info.step, s[key], s["active"], info.stats.get("selection_score"), info.stats.get("agreement"))
            for info, s in per_checkpoint
        ],
    }


def _mean_std(rows: list[dict[str, float]], field: str) -> str:
    values = np.array([r[field] for r in rows if field in r], dtype=float)
    if values.size == 0:
        return "–"
    return f"{values.mean():.3f} ± {values.std():.3f}" if values.size > 1 else f"{values[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument(
        "--datasets", nargs="+", choices=("samson", "leaf", "microplastics"), default=["samson", "leaf"]
    )
    parser.add_argument("--samson-k", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--leaf-k", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--microplastics-k", type=int, nargs="+", default=[4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--leaf-size", type=int, default=128, help="rows = cols of leaf scenes")
    parser.add_argument("--leaf-bands", type=int, default=301)
    parser.add_argument("--leaf-train", type=int, default=4, help="leaf scenes to train on")
    parser.add_argument("--leaf-test", type=int, default=2, help="other leaf scenes to score")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-dgc", action="store_true", help="baselines only")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig override (model.KEY for model settings), repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only print the table of these --json files together",
    )
    args = parser.parse_args(argv)
    if args.merge:
        print_table(merge(args.merge))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    methods = list(BASELINES) + ([] if args.no_dgc else ["DGC best", "DGC final", "DGC recommended"])
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="napari-dgc-quality-") as scratch_name:
        scratch = Path(scratch_name)
        datasets = []
        if "samson" in args.datasets:
            samson = load_samson(args.data, scratch)
            if samson is None:
                print(f"Samson not found under {args.data / 'samson'}: skipped", file=sys.stderr)
            else:
                datasets.append((samson, args.samson_k))
        if "microplastics" in args.datasets:
            micro = load_microplastics(args.data)
            if micro is None:
                print(f"microplastics not found under {args.data}: skipped", file=sys.stderr)
            else:
                datasets.append((micro, args.microplastics_k))
        if "leaf" in args.datasets:
            datasets.append(
                (
                    make_leaf(scratch, args.leaf_size, args.leaf_bands, args.leaf_train, args.leaf_test),
                    args.leaf_k,
                )
            )
        for dataset, ks in datasets:
            for k in ks:
                rows: dict[str, list] = {m: [] for m in methods}
                notes = []
                for seed in args.seeds:
                    for name, scores in run_baselines(dataset, k, seed).items():
                        rows[name].append(scores)
                    if not args.no_dgc:
                        dgc = run_dgc(dataset, k, seed, args, scratch)
                        rows["DGC best"].append(dgc["best"])
                        rows["DGC final"].append(dgc["final"])
                        rows["DGC recommended"].append(dgc["recommended"])
                        notes.append(
                            {
                                key: dgc[key]
                                for key in (
                                    "best_step",
                                    "final_step",
                                    "recommended_step",
                                    "trajectory",
                                    "train_seconds",
                                    "start",
                                    "selection_scores",
                                    "curve",
                                )
                            }
                        )
                        print(
                            f"# {dataset.name} K={k} seed={seed}: best step "
                            f"{dgc['best_step']}, recommended step {dgc['recommended_step']}, "
                            f"trajectory {dgc['trajectory']}, trained {dgc['train_seconds']:.0f} s, "
                            f"selected start {dgc['start']} (selection scores "
                            f"{dgc['selection_scores']}), "
                            f"curve (step, score, active) {dgc['curve']}",
                            flush=True,
                        )
                results[f"{dataset.name} K={k}"] = {"scores": rows, "dgc": notes}

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


def print_table(results: dict) -> None:
    """The markdown tables: mean ± std over seeds of every dataset, K and method; the lowest
    seed of each; the trajectory figures of every DGC run.
    """
    fields = ["nmi", "ari", "acc", "miou", "bt_miou", "iou_bg", "iou_tissue", "water_iou"]
    print(
        "\n| data | K | method | NMI | ARI | accuracy | mIoU | B–T mIoU | IoU bg | IoU tissue | water IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, entry in results.items():
        name, k = label.split(" K=")
        for method, rows in entry["scores"].items():
            cells = " | ".join(_mean_std(rows, f) for f in fields)
            print(f"| {name} | {k} | {method} | {cells} |")
    print("\n| data | K | method | main score per seed | lowest |")
    print("|---|---|---|---|---|")
    for label, entry in results.items():
        name, k = label.split(" K=")
        key = "bt_miou" if name == "leaf" else "nmi"
        for method, rows in entry["scores"].items():
            values = [r[key] for r in rows if key in r]
            if values:
                listed = " / ".join(f"{v:.3f}" for v in values)
                print(f"| {name} | {k} | {method} ({key}) | {listed} | {min(values):.3f} |")
    print(
        "\n| data | K | seed run | best step | recommended step | ignition (checkpoint) "
        "| dip after ignition | last gap |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, entry in results.items():
        name, k = label.split(" K=")
        for index, note in enumerate(entry["dgc"]):
            if "trajectory" in note:
                t = note["trajectory"]
                print(
                    f"| {name} | {k} | {index} | {note['best_step']} | {note['recommended_step']} | "
                    f"{t['ignition']} | {t['dip']:.3f} | {t['last_gap']:.3f} |"
                )


def merge(files: list[Path]) -> dict:
    """Results of several ``--json`` files (e.g. seeds run side by side) as one."""
    merged: dict = {}
    for file in files:
        for label, entry in json.loads(file.read_text()).items():
            target = merged.setdefault(label, {"scores": {}, "dgc": []})
            for method, rows in entry["scores"].items():
                target["scores"].setdefault(method, []).extend(rows)
            target["dgc"].extend(entry["dgc"])
    return merged


if __name__ == "__main__":
    sys.exit(main())
