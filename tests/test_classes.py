"""Tests of napari_dgc.analysis.classes: mappings, their JSON forms and per-cluster statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dgc.analysis.classes import ClassMapping, ClusterStatistics, SemanticClass, cluster_statistics
from napari_dgc.errors import MappingError


def make_mapping() -> ClassMapping:
    return ClassMapping(
        classes=[
            SemanticClass("background", "#808080", [0, 3]),
            SemanticClass("tissue", "#2ca02c", [1, 2]),
        ],
        n_clusters=4,
    )


def test_apply_merges_clusters_into_one_based_classes():
    clusters = np.array([[0, 1, 2, 3], [3, 3, 2, 0]])
    expected = np.array([[1, 2, 2, 1], [1, 1, 2, 1]])
    np.testing.assert_array_equal(make_mapping().apply(clusters), expected)


def test_partial_mapping_leaves_unassigned_clusters_zero():
    mapping = make_mapping()
    mapping.assign([3], None)
    assert mapping.unassigned_clusters() == [3]
    np.testing.assert_array_equal(mapping.apply(np.array([0, 3, 1])), [1, 0, 2])


def test_assign_moves_a_cluster_between_classes():
    mapping = make_mapping()
    mapping.assign([0, 1], 1)
    assert mapping.classes[0].clusters == [3]
    assert mapping.classes[1].clusters == [0, 1, 2]
    assert mapping.class_of_cluster(0) == 1


def test_project_form_round_trips_through_a_file(tmp_path):
    path = make_mapping().save(tmp_path / "merge.json")
    loaded = ClassMapping.load(path, n_clusters=4)
    assert loaded == make_mapping()
    assert json.loads(path.read_text())["format"] == "napari-dgc-class-mapping"


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "merge.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        make_mapping().save(path)
    assert path.read_text() == "keep me"


def test_reference_form_gives_named_classes(tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps({"1": [1, 2], "0": [0, 3]}))
    mapping = ClassMapping.load(path, n_clusters=4)
    assert [c.name for c in mapping.classes] == ["background", "tissue"]
    assert [c.clusters for c in mapping.classes] == [[0, 3], [1, 2]]
    np.testing.assert_array_equal(mapping.lookup_table(), [1, 2, 2, 1])


def test_reference_form_with_names_keeps_file_order():
    mapping = ClassMapping.from_json({"leaf": [1], "belt": [0]}, n_clusters=2)
    assert [c.name for c in mapping.classes] == ["leaf", "belt"]


def test_reference_form_needs_the_cluster_count():
    with pytest.raises(MappingError, match="number of clusters"):
        ClassMapping.from_json({"0": [0], "1": [1]})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"0": [0, 7], "1": [1, 2, 3]}, "cluster 7"),
        ({"0": [0], "1": [1, 2]}, r"cluster\(s\) \[3\]"),
        ({"0": [0, 1], "1": [1, 2, 3]}, "cluster 1 is in both"),
        ({"0": "0,1", "1": [2, 3]}, "list of cluster ids"),
        ({"0": [0.5], "1": [1, 2, 3]}, "integers"),
    ],
)
def test_bad_mappings_are_refused(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(MappingError, match=message) as info:
        ClassMapping.load(path, n_clusters=4)
    assert str(path) in str(info.value)


def test_project_form_for_another_cluster_count_is_refused(tmp_path):
    path = make_mapping().save(tmp_path / "merge.json")
    with pytest.raises(MappingError, match="for 4 clusters, but the model has 6"):
        ClassMapping.load(path, n_clusters=6)


def test_invalid_json_and_colour_are_refused(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(MappingError, match="not valid JSON"):
        ClassMapping.load(path, n_clusters=4)
    document = make_mapping().to_json()
    document["classes"][0]["color"] = "grey"
    with pytest.raises(MappingError, match="colour"):
        ClassMapping.from_json(document)


def test_apply_refuses_unknown_cluster_ids():
    with pytest.raises(MappingError, match="0..3"):
        make_mapping().apply(np.array([0, 4]))


def test_cluster_statistics_match_direct_computation(rng):
    cube = rng.normal(size=(9, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=(9, 7))
    labels[labels == 2] = 0  # cluster 2 stays empty
    stats = cluster_statistics(cube, labels, 3, block_pixels=10)  # several row blocks
    for k in (0, 1):
        np.testing.assert_allclose(stats.mean[k], cube[labels == k].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats.std[k], cube[labels == k].std(axis=0), rtol=1e-5)
    assert stats.counts.tolist() == [int((labels == 0).sum()), int((labels == 1).sum()), 0]
    assert np.isnan(stats.mean[2]).all()
    np.testing.assert_allclose(stats.shares.sum(), 1.0)


def test_cluster_statistics_of_band_first_data_and_pooling(rng):
    first = rng.normal(size=(6, 5, 4))
    second = rng.normal(size=(4, 5, 4)) + 3
    labels_first = rng.integers(0, 2, size=(6, 5))
    labels_second = rng.integers(0, 2, size=(4, 5))
    stats_first = cluster_statistics(np.moveaxis(first, -1, 0), labels_first, 2, band_axis=0)
    stats_second = cluster_statistics(second, labels_second, 2)
    pooled = ClusterStatistics.pooled([stats_first, stats_second])
    everything = np.concatenate([first[labels_first == 1], second[labels_second == 1]])
    np.testing.assert_allclose(pooled.mean[1], everything.mean(axis=0))
    np.testing.assert_allclose(pooled.std[1], everything.std(axis=0))


def test_cluster_statistics_refuse_a_label_map_of_another_shape(rng):
    with pytest.raises(MappingError, match="shape"):
        cluster_statistics(rng.normal(size=(4, 4, 3)), np.zeros((4, 5), dtype=int), 2)
