"""Tests of napari_dgc.analysis.export: label maps with legends and model folders from a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _training_helpers import configured
from PIL import Image

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.analysis.export import (
    cluster_legend,
    export_model_folder,
    load_model_folder,
    write_class_map,
    write_label_map,
)
from napari_dgc.config import ModelConfig
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.errors import CheckpointError, DGCError, MappingError
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.io import Cube
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.loop import train

K = 3


def three_classes(n_clusters: int = K) -> ClassMapping:
    return ClassMapping(
        [SemanticClass("background", "#808080", [0]), SemanticClass("tissue", "#2ca02c", [1, 2])], n_clusters
    )


@pytest.fixture(scope="module")
def scene():
    return make_leaf_scene(32, 32, 16, seed=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory, scene) -> RunDirectory:
    torch.set_num_threads(1)
    config = configured(
        model=ModelConfig(n_clusters=K, embed_dim=8, meanshift_iters=1, meanshift_window=3),
        steps=4,
        checkpoint_every=2,
        data__crop_size=16,
        data__batch_size=1,
        data__pairs_per_cube=2,
        seed=0,
    )
    folder = tmp_path_factory.mktemp("run") / "run"
    cube = Cube(
        data=scene.cube, band_axis=2, wavelengths=scene.wavelengths, path=Path("leaf"), format="synthetic"
    )
    for _ in train([cube], config, folder):
        pass
    run = RunDirectory.open(folder)
    run.choose(run.checkpoints()[0].checkpoint_id)  # not the latest: the export must use it
    return run


def test_model_folder_round_trip_segments_like_the_checkpoint(run, scene, tmp_path):
    folder = export_model_folder(run, tmp_path / "model", three_classes())
    assert sorted(p.name for p in folder.iterdir()) == ["classes.json", "model.json", "model.safetensors"]
    info = json.loads((folder / "model.json").read_text())
    assert info["source"]["checkpoint"] == run.chosen_checkpoint == "step-000002"
    assert info["n_bands"] == 16 and len(info["wavelengths"]) == 16
    model, mapping = load_model_folder(folder)
    assert mapping == three_classes()
    expected = segment_cube(run.load_model(), scene.cube).labels
    labels = segment_cube(model, scene.cube).labels
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(mapping.apply(labels), np.where(labels == 0, 1, 2))


def test_model_folder_refuses_bad_mappings_and_existing_folders(run, tmp_path):
    with pytest.raises(MappingError, match="4 clusters, but the model has 3"):
        export_model_folder(run, tmp_path / "a", three_classes(4))
    partial = three_classes()
    partial.assign([2], None)
    with pytest.raises(MappingError, match=r"\[2\]"):
        export_model_folder(run, tmp_path / "b", partial)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_model_folder(run, occupied, three_classes())
    with pytest.raises(FileExistsError, match="not a napari-dgc model folder"):
        export_model_folder(run, occupied, three_classes(), overwrite=True)
    assert (occupied / "notes.txt").read_text() == "mine"
    model = export_model_folder(run, tmp_path / "model", three_classes())
    changed = three_classes()
    changed.assign([2], 0)
    export_model_folder(run, model, changed, overwrite=True)
    assert load_model_folder(model)[1] == changed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_corrupt_model_folders_are_refused(run, tmp_path):
    folder = export_model_folder(run, tmp_path / "model", three_classes())
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model_folder(folder)
    with pytest.raises(CheckpointError, match="not a napari-dgc model folder"):
        load_model_folder(tmp_path)
    other = export_model_folder(run, tmp_path / "other", three_classes())
    (other / "classes.json").write_text(json.dumps({"0": [0, 1]}))
    with pytest.raises(MappingError, match=r"\[2\]"):
        load_model_folder(other)


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".png"])
def test_class_maps_round_trip_with_legend(tmp_path, suffix):
    class_map = three_classes().apply(np.array([[0, 1], [2, 0]]))
    map_path, legend_path = write_class_map(tmp_path / f"leaf{suffix}", class_map, three_classes())
    if suffix == ".tif":
        read = tifffile.imread(map_path)
    elif suffix == ".npy":
        read = np.load(map_path)
    else:
        with Image.open(map_path) as image:
            read = np.asarray(image)
            assert image.getpalette()[3:9] == [128, 128, 128, 44, 160, 44]
    np.testing.assert_array_equal(read, [[1, 2], [2, 1]])
    legend = json.loads(legend_path.read_text())
    assert legend["values"][2] == {"value": 2, "name": "tissue", "color": "#2ca02c", "clusters": [1, 2]}
    assert legend["map"] == f"leaf{suffix}"


def test_label_map_refusals(tmp_path):
    labels = np.zeros((2, 2), dtype=np.int32)
    write_label_map(tmp_path / "a.npy", labels, cluster_legend(2))
    with pytest.raises(FileExistsError):
        write_label_map(tmp_path / "a.npy", labels + 1, cluster_legend(2))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), labels)
    with pytest.raises(DGCError, match="does not fit a PNG"):
        write_label_map(tmp_path / "b.png", labels + 300, cluster_legend(2))
    with pytest.raises(DGCError, match="unsupported"):
        write_label_map(tmp_path / "b.jpg", labels, cluster_legend(2))
    with pytest.raises(DGCError, match="non-negative"):
        write_label_map(tmp_path / "b.tif", labels - 1, cluster_legend(2))


def test_spectra_csv_text_empty_groups_and_unknown_wavelengths():
    """Issue 15 item 5: per-cluster and per-class mean ± std spectra as CSV."""
    import csv
    import io

    from napari_dgc.analysis.classes import ClassMapping, SemanticClass, cluster_statistics
    from napari_dgc.analysis.export import SPECTRA_CSV_COLUMNS, spectra_csv_text
    from napari_dgc.errors import DGCError

    cube = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)
    statistics = cluster_statistics(cube, np.array([[0, 0], [2, 2]]), 3)  # cluster 1 is empty
    mapping = ClassMapping([SemanticClass("a", "#000000", [0, 1]), SemanticClass("b", "#ffffff", [])], 3)
    rows = list(csv.reader(io.StringIO(spectra_csv_text(statistics, None, mapping))))
    assert tuple(rows[0]) == SPECTRA_CSV_COLUMNS and len(rows) == 1 + (3 + 2) * 3
    empty = [r for r in rows[1:] if r[:2] in (["cluster", "1"], ["class", "2"])]
    assert len(empty) == 6 and all(r[3] == "0" and r[5:] == ["", "", ""] for r in empty)
    class_a = [r for r in rows[1:] if r[:2] == ["class", "1"]]
    np.testing.assert_allclose([float(r[6]) for r in class_a], cube[0].mean(0))
    with pytest.raises(DGCError, match="2 wavelengths for 3 bands"):
        spectra_csv_text(statistics, [1.0, 2.0])
