"""Tests of the npe2 writer napari_dgc._writer.write_class_map."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from napari_dgc._writer import write_class_map
from napari_dgc.analysis.classes import ClassMapping, SemanticClass


def test_classes_layer_is_written_with_its_class_legend(tmp_path):
    mapping = ClassMapping(
        [SemanticClass("background", "#808080", [0]), SemanticClass("tissue", "#2ca02c", [2])], 3
    )
    data = mapping.apply(np.array([[0, 1], [2, 2]]))
    written = write_class_map(
        str(tmp_path / "classes.tif"),
        data,
        {"name": "DGC classes [leaf]", "metadata": {"dgc_mapping": mapping.to_json()}},
    )
    assert written == [str(tmp_path / "classes.tif"), str(tmp_path / "classes.legend.json")]
    np.testing.assert_array_equal(tifffile.imread(written[0]), [[1, 0], [2, 2]])
    legend = json.loads((tmp_path / "classes.legend.json").read_text())
    assert [v["name"] for v in legend["values"]] == ["unassigned", "background", "tissue"]
    assert legend["values"][0]["clusters"] == [1]
    assert legend["layer"] == "DGC classes [leaf]"


def test_cluster_layer_is_written_as_cluster_ids(tmp_path):
    meta = {
        "name": "DGC clusters [leaf]",
        "metadata": {"dgc_n_clusters": 3, "dgc_label_offset": 1, "dgc_run": "r"},
    }
    write_class_map(str(tmp_path / "clusters.npy"), np.array([[1, 2], [3, 1]]), meta)
    np.testing.assert_array_equal(np.load(tmp_path / "clusters.npy"), [[0, 1], [2, 0]])
    legend = json.loads((tmp_path / "clusters.legend.json").read_text())
    assert legend["kind"] == "clusters" and len(legend["values"]) == 3


def test_other_labels_layers_are_written_unchanged(tmp_path):
    write_class_map(
        str(tmp_path / "mask.png"),
        np.array([[0, 255], [1, 1]], dtype=np.uint8),
        {"name": "mask", "metadata": {}},
    )
    from PIL import Image

    with Image.open(tmp_path / "mask.png") as image:
        np.testing.assert_array_equal(np.asarray(image), [[0, 255], [1, 1]])
    legend = json.loads((tmp_path / "mask.legend.json").read_text())
    assert [v["value"] for v in legend["values"]] == [0, 1, 255]
