"""Tests of napari_dgc.inference.checkpoint_review against a real (tiny) training run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _training_helpers import N_CLUSTERS, tiny_config, tiny_cube

from napari_dgc.errors import CheckpointError
from napari_dgc.inference import checkpoint_review
from napari_dgc.inference.checkpoint_review import CheckpointReview
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.io import open_cube
from napari_dgc.metrics import (
    active_clusters,
    calinski_harabasz,
    cluster_usage,
    normalized_mutual_info,
    usage_entropy,
)
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.loop import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished run on two small synthetic cubes, and those cubes."""
    cubes = {
        "a": tiny_cube(32, 32, seed=1),
        "b": tiny_cube(24, 28, seed=2),
    }
    run_dir = tmp_path_factory.mktemp("review") / "run"
    for _ in train(list(cubes.values()), tiny_config(), run_dir):
        pass
    return run_dir, cubes


def test_labels_match_segmenting_directly_and_are_cached(trained_run):
    run_dir, cubes = trained_run
    review = CheckpointReview(run_dir, cubes)
    ids = [info.checkpoint_id for info in review.checkpoints()]
    assert ids == ["step-000002", "step-000004", "step-000006"]
    assert review.cached_labels(ids[1]) is None

    labels = review.labels(ids[1])
    model = RunDirectory.open(run_dir).load_model(ids[1])
    for key, cube in cubes.items():
        np.testing.assert_array_equal(labels[key], segment_cube(model, cube).labels)
        assert labels[key].shape == cube.shape[:2]
    assert review.cached_labels(ids[1]) is labels
    assert review.labels(ids[1]) is labels


def test_figures_pool_all_cubes(trained_run):
    run_dir, cubes = trained_run
    review = CheckpointReview(run_dir, cubes)
    infos = review.checkpoints()
    first = review.figures(infos[0].checkpoint_id)
    assert first.nmi_to_previous is None
    assert first.step == infos[0].step

    second = review.figures(infos[1].checkpoint_id)
    pooled = [np.concatenate([review.labels(i.checkpoint_id)[k].ravel() for k in cubes]) for i in infos[:2]]
    assert second.nmi_to_previous == pytest.approx(normalized_mutual_info(pooled[0], pooled[1]))
    assert second.active_clusters == active_clusters(
        pooled[1], N_CLUSTERS, min_fraction=checkpoint_review.ACTIVE_MIN_FRACTION
    )
    assert 1 <= second.active_clusters <= N_CLUSTERS
    assert second.usage_entropy == pytest.approx(
        usage_entropy(cluster_usage(pooled[1], N_CLUSTERS), normalized=True)
    )
    assert second.losses == checkpoint_review.recorded_losses(infos[1])
    assert review.cached_figures(infos[1].checkpoint_id) is second
    assert review.checkpoints_without_figures() == [infos[2].checkpoint_id]


def test_spectral_separation_is_calinski_harabasz_on_the_normalised_spectra(trained_run):
    run_dir, cubes = trained_run
    review = CheckpointReview(run_dir, cubes)
    checkpoint_id = review.checkpoints()[1].checkpoint_id
    figures = review.figures(checkpoint_id)
    model = RunDirectory.open(run_dir).load_model(checkpoint_id)
    labels = review.labels(checkpoint_id)
    # Both tiny cubes hold fewer pixels than the sample: every pixel counts.
    spectra = [
        model.spectral_input(torch.from_numpy(cube.reshape(-1, cube.shape[-1]))).numpy()
        for cube in cubes.values()
    ]
    expected = calinski_harabasz(
        np.concatenate(spectra), np.concatenate([labels[key].ravel() for key in cubes])
    )
    assert figures.spectral_separation == pytest.approx(expected, rel=1e-5)
    assert figures.spectral_separation > 0

    uncached = CheckpointReview(run_dir, cubes, spectral_cache_bytes=0)
    assert uncached.figures(checkpoint_id).spectral_separation is None


def test_concurrent_requests_segment_once(trained_run, monkeypatch):
    run_dir, cubes = trained_run
    review = CheckpointReview(run_dir, cubes)
    loads = []
    original = review.run.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(review.run, "load_model", counting_load)
    checkpoint_id = review.checkpoints()[0].checkpoint_id
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(review.labels(checkpoint_id))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all(result is results[0] for result in results)


def test_cache_budget_drops_least_recently_used(trained_run):
    run_dir, cubes = trained_run
    one_checkpoint = sum(cube.shape[0] * cube.shape[1] * 4 for cube in cubes.values())
    review = CheckpointReview(run_dir, cubes, cache_bytes=2 * one_checkpoint)
    first, second, third = (info.checkpoint_id for info in review.checkpoints())
    review.labels(first)
    review.labels(second)
    review.cached_labels(first)  # first is now the most recently used
    review.labels(third)
    assert review.cached_labels(second) is None
    assert review.cached_labels(first) is not None
    assert review.cached_labels(third) is not None


def test_band_count_mismatch_names_the_cube(trained_run):
    run_dir, cubes = trained_run
    with pytest.raises(CheckpointError, match="'wrong'.*15 bands.*16"):
        CheckpointReview(run_dir, {"wrong": cubes["a"][..., :15]})


def test_unknown_checkpoint_and_missing_run(trained_run, tmp_path):
    run_dir, cubes = trained_run
    review = CheckpointReview(run_dir, cubes)
    with pytest.raises(CheckpointError, match="step-999999"):
        review.figures("step-999999")
    with pytest.raises(CheckpointError):
        review.labels("step-999999")
    with pytest.raises(CheckpointError):
        CheckpointReview(tmp_path / "not-a-run", cubes)


@pytest.fixture
def counted_cubes(trained_run, tmp_path, monkeypatch):
    """The run's cubes as memory-mapped Cubes whose raw reads are counted by key."""
    _, cubes = trained_run
    reads = {key: 0 for key in cubes}
    opened = {}
    for key, array in cubes.items():
        np.save(tmp_path / f"{key}.npy", array)
        cube = open_cube(tmp_path / f"{key}.npy")
        original = cube.read_window

        def counting_read(rows, cols, key=key, original=original):
            reads[key] += 1
            return original(rows, cols)

        monkeypatch.setattr(cube, "read_window", counting_read)
        opened[key] = cube
    return opened, reads


def test_later_checkpoints_reuse_the_spectral_input(trained_run, counted_cubes):
    run_dir, arrays = trained_run
    cubes, reads = counted_cubes
    review = CheckpointReview(run_dir, cubes, tile=16)
    ids = [info.checkpoint_id for info in review.checkpoints()]
    for index, checkpoint_id in enumerate(ids):
        labels = review.labels(checkpoint_id, workers=1 + index % 2)
        model = RunDirectory.open(run_dir).load_model(checkpoint_id)
        for key, array in arrays.items():
            np.testing.assert_array_equal(labels[key], segment_cube(model, array).labels)
        if index == 0:
            first_reads = dict(reads)
            assert all(count > 0 for count in first_reads.values())
    assert reads == first_reads  # the raw cubes were read for the first checkpoint only


def test_spectral_input_of_another_normalisation_is_not_reused(trained_run, counted_cubes, monkeypatch):
    run_dir, arrays = trained_run
    cubes, reads = counted_cubes
    review = CheckpointReview(run_dir, cubes)
    first, second, _ = (info.checkpoint_id for info in review.checkpoints())
    review.labels(first)
    first_reads = dict(reads)
    original = review.run.load_model

    def renormalised(*args, **kwargs):
        model = original(*args, **kwargs)
        model.set_normalization(model.band_offset + 0.5, model.band_scale * 2.0)
        return model

    monkeypatch.setattr(review.run, "load_model", renormalised)
    labels = review.labels(second)
    assert all(reads[key] > first_reads[key] for key in reads)
    model = renormalised(second)
    for key, array in arrays.items():
        np.testing.assert_array_equal(labels[key], segment_cube(model, array).labels)


def test_spectral_cache_budget(trained_run, counted_cubes):
    run_dir, _ = trained_run
    cubes, reads = counted_cubes
    # tiny_config keeps all 16 bands: 16 float32 per pixel; cube "a" is 32 x 32, "b" 24 x 28.
    size_a, size_b = 32 * 32 * 16 * 4, 24 * 28 * 16 * 4
    ids = [info.checkpoint_id for info in CheckpointReview(run_dir, cubes).checkpoints()]

    off = CheckpointReview(run_dir, cubes, spectral_cache_bytes=0)
    off.labels(ids[0])
    before = dict(reads)
    off.labels(ids[1])
    assert all(reads[key] > before[key] for key in reads)

    # Room for "a" (segmented first) but not for both: "a" is kept, "b" read every time.
    only_a = CheckpointReview(run_dir, cubes, spectral_cache_bytes=size_a + size_b - 1)
    for checkpoint_id in ids:
        before = dict(reads)
        only_a.labels(checkpoint_id)
        assert reads["b"] > before["b"]
        assert reads["a"] == before["a"] or checkpoint_id == ids[0]
