"""The merge panel's model without Qt or napari: signals, operations and refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_dgc.analysis.classes import cluster_statistics
from napari_dgc.analysis.masks import DrawnShape
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.errors import DGCError, MappingError, MaskError
from napari_dgc.state.merge import Clustering, MaskInput, MergeModel, MergeStateError

ROWS, COLS, BANDS = 16, 20, 8


@pytest.fixture(scope="module")
def scene():
    return make_leaf_scene(ROWS, COLS, BANDS, seed=5)


@pytest.fixture
def clusters(scene):
    """Background split into left (0) and right (3), tissue 1, lesion 2."""
    labels = scene.labels.astype(np.int64).copy()
    labels[(scene.labels == 0) & (np.arange(COLS) >= COLS // 2)] = 3
    return labels


@pytest.fixture
def model(scene, clusters):
    model = MergeModel()
    cube = np.moveaxis(scene.cube, -1, 0)
    model.set_clustering(
        Clustering(
            "/runs/demo", "step-000010", 4, {"leaf": clusters}, {"leaf": cube}, {"leaf": scene.wavelengths}
        )
    )
    return model


class Recorder:
    """Counts emissions of every signal of a model."""

    NAMES = (
        "mapping_changed",
        "statistics_changed",
        "selection_changed",
        "pixel_changed",
        "ground_truth.changed",
        "report_changed",
        "granularity_changed",
        "history_changed",
        "message",
    )

    def __init__(self, model: MergeModel) -> None:
        self.calls: dict[str, list[tuple]] = {name: [] for name in self.NAMES}
        for name in self.NAMES:
            signal = model.ground_truth.changed if name == "ground_truth.changed" else getattr(model, name)
            signal.connect(lambda *args, name=name: self.calls[name].append(args))

    def count(self, name: str) -> int:
        return len(self.calls[name])


def test_the_model_imports_no_gui():
    code = (
        "import sys, napari_dgc.state.merge; "
        "print(sorted(m for m in ('qtpy', 'PyQt5', 'napari', 'magicgui', 'pyqtgraph') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "[]\n"
    )


def test_setting_a_clustering_computes_statistics_and_refits_the_mapping(scene, clusters):
    model = MergeModel()
    recorder = Recorder(model)
    model.select_clusters([0, 5])
    cube = np.moveaxis(scene.cube, -1, 0)
    model.set_clustering(Clustering("/runs/demo", "step-000010", 4, {"leaf": clusters}, {"leaf": cube}))
    assert recorder.count("statistics_changed") == 1 and recorder.count("mapping_changed") == 1
    assert model.n_clusters == 4 and model.mapping.n_clusters == 4
    assert [c.name for c in model.mapping.classes] == ["background", "tissue"]
    assert model.selected_clusters == [0]  # cluster 5 is gone with K = 4
    expected = cluster_statistics(scene.cube, clusters, 4)
    np.testing.assert_allclose(model.statistics["leaf"].mean, expected.mean, rtol=1e-6)
    np.testing.assert_array_equal(model.pooled_statistics().counts, expected.counts)
    x, label = model.spectral_axis()
    assert label == "band" and x.tolist() == list(range(BANDS))  # no wavelengths given
    assert recorder.calls["message"][-1] == ("1 cube(s), 4 clusters of checkpoint step-000010.",)

    model.set_clustering(None)
    assert (
        model.statistics == {} and model.spectral_axis() is None and recorder.count("statistics_changed") == 2
    )


def test_a_bad_cluster_map_leaves_the_clustering_as_it_was(model, scene, clusters):
    before = model.clustering
    bad = Clustering(
        "/runs/demo", "step-000020", 3, {"leaf": clusters}, {"leaf": np.moveaxis(scene.cube, -1, 0)}
    )
    with pytest.raises(MappingError, match="outside 0..2"):
        model.set_clustering(bad)
    assert model.clustering is before and model.mapping.n_clusters == 4


def test_mapping_edits_emit_and_refusals_change_nothing(model):
    recorder = Recorder(model)
    model.select_clusters([0, 3])
    model.select_clusters([3, 0])  # the same selection: no signal
    assert recorder.count("selection_changed") == 1
    model.assign_selected(0)
    assert model.add_class("lesion") == 2 and model.add_class() == 3
    assert [c.name for c in model.mapping.classes] == ["background", "tissue", "lesion", "class 1"]
    model.assign([1], 1)
    model.assign([2], 2)
    model.rename_class(3, "  spare ")
    model.set_class_color(3, "#123456")
    assert model.mapping.classes[3].name == "spare" and model.mapping.classes[3].color == "#123456"
    model.remove_class(3)
    assert [c.clusters for c in model.mapping.classes] == [[0, 3], [1], [2]]
    assert recorder.count("mapping_changed") == 8
    assert recorder.calls["message"][0] == ("Cluster(s) [0, 3] → background.",)

    saved = model.mapping.to_json()
    with pytest.raises(MappingError, match="used twice"):
        model.rename_class(1, "Background")
    with pytest.raises(MappingError, match="colour"):
        model.set_class_color(1, "green")
    with pytest.raises(MappingError, match="only clusters 0..3"):
        model.assign([1, 7], 2)
    with pytest.raises(MergeStateError, match="select a class"):
        model.assign([1], 5)
    with pytest.raises(MergeStateError, match="select one or more clusters"):
        model.assign([], 0)
    with pytest.raises(MergeStateError, match="select a class"):
        model.remove_class(-1)
    assert model.mapping.to_json() == saved and recorder.count("mapping_changed") == 8


def test_picking_a_pixel_describes_it(model, scene, clusters):
    recorder = Recorder(model)
    model.assign([1], 1)
    row, col = map(int, np.argwhere(clusters == 1)[0])
    text = model.pick_pixel("leaf", row, col)
    assert text == f"leaf, row {row}, col {col}: cluster 1, class tissue"
    assert recorder.calls["pixel_changed"] == [(text,)]
    np.testing.assert_allclose(model.pixel[1], scene.cube[row, col])
    assert model.spectral_axis()[1] == "wavelength (nm)"


def test_iou_suggestion_and_exports(model, scene, clusters, tmp_path):
    recorder = Recorder(model)
    with pytest.raises(MergeStateError, match="compute the IoU first"):
        model.export_report(json_path=tmp_path / "iou.json")
    truth = scene.labels.copy()
    model.ground_truth.set(
        {"leaf": MaskInput(truth, {0: "background", 1: "tissue", 2: "lesion"}, "ground truth")}
    )
    assert recorder.count("ground_truth.changed") == 1

    report = model.compute_iou()  # nothing assigned: the suggestion is scored, the mapping kept
    assert report.mapping_source.startswith("suggested") and report.pooled.mean_iou == pytest.approx(1.0)
    assert model.report is report and recorder.count("report_changed") == 1
    assert model.mapping.unassigned_clusters() == [0, 1, 2, 3]
    assert recorder.calls["message"][-1][0].startswith("No clusters assigned yet")

    model.apply_suggestion("hungarian")  # one-to-one: the larger background half is background
    larger_half = max((0, 3), key=lambda k: np.sum(clusters == k))
    assert [c.clusters for c in model.mapping.classes] == [[larger_half], [1], [2]]
    model.apply_suggestion("many-to-one")
    assert [c.clusters for c in model.mapping.classes] == [[0, 3], [1], [2]]
    written = model.export_report(json_path=tmp_path / "iou.json", csv_path=tmp_path / "iou.csv")
    assert [p.name for p in written] == ["iou.json", "iou.csv"]

    truth[0, 0] = 1  # the mask is the layer's own array: later paint counts
    model.ground_truth.class_names = "background, tissue, tissue"
    assert recorder.count("ground_truth.changed") == 2
    report = model.compute_iou()
    assert report.mapping_source == "panel" and report.class_names == ["background", "tissue", "lesion"]
    assert report.pooled.iou[0] < 1.0  # the painted pixel is a background cluster
    assert recorder.calls["message"][-1][0].startswith("Mean IoU (pooled)")

    maps = model.export_class_maps(tmp_path, "npy")
    np.testing.assert_array_equal(np.load(maps[0]), model.mapping.apply(clusters))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        model.export_class_maps(tmp_path, "npy")
    assert model.export_class_maps(tmp_path, "npy", overwrite=True) == maps


def test_bad_mask_names_and_values_are_refused(model, scene):
    model.ground_truth.set({"leaf": MaskInput(scene.labels, {0: "background", 1: "tissue"}, "two classes")})
    model.assign([0, 3], 0)
    with pytest.raises(MaskError, match="two classes"):
        model.compute_iou()  # value 2 (lesion) is not in the legend
    model.ground_truth.class_names = "background,,tissue"
    with pytest.raises(MaskError, match="non-empty"):
        model.compute_iou()
    assert model.report is None


def test_mask_files_are_read_for_the_clustering_cubes(model, tmp_path):
    with pytest.raises(MaskError, match=r"no mask file name matches a cube \(leaf\)"):
        model.read_masks([tmp_path / "other.npy"])
    good, unmatched = tmp_path / "leaf_mask.npy", tmp_path / "other.npy"
    np.save(good, np.ones((ROWS, COLS), np.uint8))
    masks, left_over = model.read_masks([good, unmatched])
    assert list(masks) == ["leaf"] and masks["leaf"].values.sum() == ROWS * COLS and left_over == [unmatched]
    np.save(good, np.ones((ROWS, COLS + 1), np.uint8))
    with pytest.raises(MaskError, match="differs from the cube's"):
        model.read_masks([good])


def test_mapping_files_round_trip_and_bad_files_change_nothing(model, tmp_path):
    recorder = Recorder(model)
    model.assign([0, 3], 0)
    with pytest.raises(MappingError, match=r"\[1, 2\]"):
        model.save_mapping(tmp_path / "partial.json")
    model.assign([1, 2], 1)
    path = model.save_mapping(tmp_path / "merge.json")
    saved = model.mapping.to_json()
    with pytest.raises(FileExistsError):
        model.save_mapping(path)
    model.assign([0, 1, 2, 3], None)
    assert model.load_mapping(path).to_json() == saved
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"0": [0, 3, 5], "1": [1, 2]}))
    changes = recorder.count("mapping_changed")
    with pytest.raises(MappingError, match="cluster 5"):
        model.load_mapping(foreign)
    assert model.mapping.to_json() == saved and recorder.count("mapping_changed") == changes


def test_model_export_needs_a_clustering(tmp_path):
    with pytest.raises(MergeStateError, match="nothing to export"):
        MergeModel().export_model(tmp_path / "model")


def test_granularity_follows_the_merge_tree_and_keeps_class_names(model, clusters):
    recorder = Recorder(model)
    assert model.granularity is None and model.merge_tree().n_active == 4
    model.set_granularity(3)
    tree = model.merge_tree()
    assert model.granularity == 3 and recorder.count("granularity_changed") == 1
    assert recorder.count("mapping_changed") == 1
    levels = tree.mapping_at(3)  # classes by size, largest first
    assert [c.clusters for c in model.mapping.classes] == [
        [int(k) for k in np.flatnonzero(levels == g)] for g in range(3)
    ]
    # The classes there were take the largest groups; the third gets a new class's name.
    assert [c.name for c in model.mapping.classes] == ["background", "tissue", "lesion"]
    assert recorder.calls["message"][-1] == ("3 classes from the merge tree of 4 clusters.",)
    model.rename_class(1, "leaf")  # the person edits the level by hand
    assert model.granularity is None and recorder.count("granularity_changed") == 2
    model.set_granularity(2)
    # The merged class keeps the name of the class it shares most pixels with.
    merged = tree.mapping_at(2)
    largest = [int(k) for k in np.flatnonzero(merged == 0)]
    assert model.mapping.classes[model.mapping.class_of_cluster(largest[0])].clusters == largest
    assert len(model.mapping.classes) == 2 and model.mapping.classes[0].name == "background"
    assert model.merge_tree() is tree  # built once per clustering
    np.testing.assert_array_equal(model.mapping.apply(clusters), model.mapping.lookup_table()[clusters])


def test_granularity_needs_statistics_and_two_active_clusters(scene, clusters):
    model = MergeModel()
    with pytest.raises(MergeStateError, match="needs the clusters' spectra"):
        model.set_granularity(2)
    model.set_clustering(
        Clustering(
            "/runs/demo", "s", 4, {"leaf": np.zeros_like(clusters)}, {"leaf": np.moveaxis(scene.cube, -1, 0)}
        )
    )
    with pytest.raises(DGCError, match="only 1 of 4 clusters has pixels"):
        model.set_granularity(2)
    model.set_clustering(
        Clustering("/runs/demo", "s", 4, {"leaf": clusters}, {"leaf": np.moveaxis(scene.cube, -1, 0)})
    )
    with pytest.raises(DGCError, match="levels 1..4"):
        model.set_granularity(5)


def test_undo_and_redo_walk_the_mapping_history(model, tmp_path):
    recorder = Recorder(model)
    assert not model.can_undo and not model.can_redo
    with pytest.raises(MergeStateError, match="nothing to undo"):
        model.undo()
    states = [model.mapping.to_json()]
    model.assign([0, 3], 0)
    states.append(model.mapping.to_json())
    model.add_class("lesion")
    states.append(model.mapping.to_json())
    model.set_granularity(4)
    model.set_granularity(3)  # a drag over two levels: one step
    states.append(model.mapping.to_json())
    model.set_class_color(0, "#000000")
    states.append(model.mapping.to_json())
    assert model.can_undo and recorder.count("history_changed") == 5
    for expected in reversed(states[:-1]):
        model.undo()
        assert model.mapping.to_json() == expected
    assert not model.can_undo and model.can_redo and model.granularity is None
    model.redo()
    model.redo()
    model.redo()
    assert model.mapping.to_json() == states[3] and model.granularity == 3
    model.assign([1], None)  # a new change drops what was undone
    assert not model.can_redo
    with pytest.raises(MergeStateError, match="nothing to redo"):
        model.redo()
    model.assign([0, 1, 2, 3], 0)
    path = model.save_mapping(tmp_path / "m.json")
    model.load_mapping(path)
    model.undo()
    assert model.mapping.classes[0].clusters == [0, 1, 2, 3]


def test_a_clustering_with_another_k_clears_the_history(model, scene, clusters):
    model.assign([0], 0)
    assert model.can_undo
    cube = np.moveaxis(scene.cube, -1, 0)
    model.set_clustering(Clustering("/runs/demo", "s", 4, {"leaf": clusters}, {"leaf": cube}))
    assert model.can_undo  # the same K: earlier mappings still fit
    model.set_clustering(Clustering("/runs/demo", "s", 5, {"leaf": clusters}, {"leaf": cube}))
    assert not model.can_undo and not model.can_redo


def test_new_masks_take_known_class_names(model, scene):
    assert model.new_mask_legend() == {0: "background", 1: "tissue", 2: "lesion"}
    names = {1: "sugar", 2: "flour", 3: "salt", 4: "eraser"}
    model.ground_truth.set({"leaf": MaskInput(scene.labels, names, "kitchen")})
    assert model.new_mask_legend() == names
    model.ground_truth.class_names = "belt, sugar"
    assert model.new_mask_legend() == {0: "belt", 1: "sugar"}


def test_masks_from_shapes_use_the_known_names(model):
    model.ground_truth.class_names = "belt, sugar"
    square = np.array([[2.0, 2.0], [2.0, 6.0], [6.0, 6.0], [6.0, 2.0]])
    mask = model.mask_from_shapes(
        "leaf",
        [DrawnShape("rectangle", square, "sugar"), DrawnShape("polygon", square + 8, "flour")],
        "shapes",
    )
    assert mask.legend == {0: "belt", 1: "sugar", 2: "flour"} and mask.values.shape == (ROWS, COLS)
    assert mask.values[4, 4] == 1 and mask.values[12, 12] == 2 and mask.values[0, 0] == 255
    with pytest.raises(MergeStateError, match="no clusters of a cube 'other'"):
        model.mask_from_shapes("other", [], "shapes")


def test_a_whole_mapping_is_one_undo_step(model):
    from napari_dgc.analysis.classes import ClassMapping, SemanticClass

    partial = ClassMapping(
        [SemanticClass("belt", "#101010", [0, 3]), SemanticClass("leaf", "#202020", [1])], 4
    )
    model.set_mapping(partial)
    partial.classes[0].name = "changed later"
    assert [c.name for c in model.mapping.classes] == [
        "belt",
        "leaf",
    ] and model.mapping.unassigned_clusters() == [2]
    model.undo()
    assert [c.name for c in model.mapping.classes] == ["background", "tissue"] and not model.can_undo
    with pytest.raises(MappingError, match="for 5 clusters"):
        model.set_mapping(ClassMapping([], 5))
