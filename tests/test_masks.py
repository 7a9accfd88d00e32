"""Tests of napari_dgc.analysis.masks: raster and LabelMe masks, validation, matching to cubes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dgc.analysis.masks import DrawnShape, Mask, mask_from_shapes, match_masks, parse_legend, read_mask
from napari_dgc.errors import MaskError

MASK = np.array([[0, 0, 1], [0, 1, 1], [255, 1, 2]], dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_raster_masks_read_back_their_values(tmp_path, suffix):
    path = tmp_path / f"leaf{suffix}"
    if suffix == ".png":
        Image.fromarray(MASK).save(path)
    elif suffix == ".tif":
        tifffile.imwrite(path, MASK)
    else:
        np.save(path, MASK.astype(np.int64))
    mask = read_mask(path, shape=(3, 3))
    np.testing.assert_array_equal(mask.values, MASK)
    assert mask.values.dtype == np.int32
    assert mask.source == path


def test_grey_saved_as_rgb_is_accepted_but_colour_is_not(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.stack([MASK] * 3, axis=-1)).save(grey)
    np.testing.assert_array_equal(read_mask(grey).values, MASK)
    colour = np.stack([MASK, MASK, np.zeros_like(MASK) + 1], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskError, match="colour image"):
        read_mask(tmp_path / "colour.png")


def test_mask_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "leaf.npy"
    np.save(path, MASK)
    with pytest.raises(MaskError, match=r"mask shape \(3, 3\) differs from the cube's \(4, 3\)") as info:
        read_mask(path, shape=(4, 3))
    assert str(path) in str(info.value)


def test_unknown_mask_values_are_named(tmp_path):
    path = tmp_path / "leaf.npy"
    np.save(path, np.array([[0, 7], [9, 1]]))
    with pytest.raises(MaskError, match=r"unknown mask value\(s\) 7, 9") as info:
        read_mask(path, legend={0: "background", 1: "tissue", 2: "lesion"})
    assert str(path) in str(info.value)
    np.save(path, np.array([[0, 256], [-1, 1]]))
    with pytest.raises(MaskError, match=r"mask value\(s\) -1, 256 out of range") as info:
        read_mask(path)
    assert str(path) in str(info.value)


def test_legend_decides_which_values_are_known(tmp_path):
    path = tmp_path / "binary.png"
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(path)
    mask = read_mask(path, legend={0: "background", 255: "tissue"})
    assert mask.legend[255] == "tissue"
    with pytest.raises(MaskError, match="unknown mask value"):
        Mask(np.array([[0, 2]]), legend={0: "background", 1: "tissue"})


def test_fractional_mask_is_refused():
    with pytest.raises(MaskError, match="integers"):
        Mask(np.array([[0.0, 0.5]]))


def labelme_file(path, height=6, width=8, shapes=None):
    shapes = (
        shapes
        if shapes is not None
        else [
            {"label": "tissue", "points": [[1, 1], [6, 1], [6, 4], [1, 4]], "shape_type": "polygon"},
            {"label": "Lesion", "points": [[2, 2], [3, 3]], "shape_type": "rectangle"},
        ]
    )
    path.write_text(json.dumps({"imageHeight": height, "imageWidth": width, "shapes": shapes}))
    return path


def test_labelme_polygons_are_painted_in_order(tmp_path):
    mask = read_mask(labelme_file(tmp_path / "leaf.json"), shape=(6, 8))
    expected = np.zeros((6, 8), dtype=np.int32)
    expected[1:5, 1:7] = 1  # polygon x 1..6, y 1..4 (vertices included)
    expected[2:4, 2:4] = 2  # rectangle drawn later wins
    np.testing.assert_array_equal(mask.values, expected)


def test_labelme_for_another_image_size_is_refused(tmp_path):
    path = labelme_file(tmp_path / "leaf.json", height=10, width=8)
    with pytest.raises(MaskError, match="10x8 image, but the cube is 6x8") as info:
        read_mask(path, shape=(6, 8))
    assert str(path) in str(info.value)


def test_labelme_unknown_label_and_shape_type_are_refused(tmp_path):
    unknown = labelme_file(
        tmp_path / "a.json", shapes=[{"label": "stem", "points": [[0, 0], [2, 0], [2, 2]]}]
    )
    with pytest.raises(MaskError, match="'stem'"):
        read_mask(unknown)
    circle = labelme_file(
        tmp_path / "b.json", shapes=[{"label": "tissue", "points": [[3, 3], [4, 4]], "shape_type": "circle"}]
    )
    with pytest.raises(MaskError, match="circle"):
        read_mask(circle)
    (tmp_path / "c.json").write_text(json.dumps({"shapes": []}))
    with pytest.raises(MaskError, match="not a LabelMe file"):
        read_mask(tmp_path / "c.json")


def test_masks_match_cubes_by_stem(tmp_path):
    cubes = ["leaf_01.hdr", "leaf_02", "leaf_03.mat"]
    files = [tmp_path / "leaf_01_mask.png", tmp_path / "LEAF_02.json", tmp_path / "other.png"]
    matched, unmatched = match_masks(files, cubes)
    assert matched == {"leaf_01.hdr": files[0], "leaf_02": files[1]}
    assert unmatched == [files[2]]
    with pytest.raises(MaskError, match="both masks of the cube 'leaf_01.hdr'"):
        match_masks([tmp_path / "leaf_01.png", tmp_path / "leaf_01-gt.tif"], cubes)


def test_parse_legend():
    assert parse_legend("belt, leaf") == {0: "belt", 1: "leaf"}
    with pytest.raises(MaskError):
        parse_legend("belt,,leaf")


# ---------------------------------------------------------------------- issue 15, item 2
SUGAR_SALT = np.array([[0, 1, 2], [3, 4, 255], [0, 0, 4]], dtype=np.uint8)


def test_a_mask_of_any_number_of_classes_is_accepted(tmp_path):
    """Sugar, flour, salt and eraser (values 1-4) are classes, not an error."""
    path = tmp_path / "contamination_mask.png"
    Image.fromarray(SUGAR_SALT).save(path)
    mask = read_mask(path, shape=(3, 3))
    np.testing.assert_array_equal(mask.values, SUGAR_SALT)
    assert mask.legend == {0: "background", 1: "tissue", 2: "lesion", 3: "class 3", 4: "class 4"}
    named = read_mask(path, legend=parse_legend("background,sugar,flour,salt,eraser"))
    assert named.legend[4] == "eraser"
    many = np.arange(255, dtype=np.uint8).reshape(15, 17)  # 255 classes: 0..254
    assert len(Mask(many).legend) == 255


def test_mask_names_and_colours_survive_save_and_load(tmp_path):
    from napari.utils.colormaps import DirectLabelColormap

    from napari_dgc._writer import write_class_map

    names = ["background", "sugar", "flour", "salt", "eraser"]
    colormap = DirectLabelColormap(
        color_dict={None: "black", 0: "#808080", 1: "#ff0000", 2: "#00ff00", 3: "#0000ff", 4: "#ffff00"}
    )
    meta = {
        "name": "mask",
        "metadata": {"dgc_cube_layer": "scene", "class_names": names},
        "colormap": colormap,
    }
    write_class_map(str(tmp_path / "scene_mask.png"), SUGAR_SALT, meta)
    legend = json.loads((tmp_path / "scene_mask.legend.json").read_text())
    assert legend["kind"] == "mask"
    assert [(v["value"], v["name"]) for v in legend["values"]] == [
        (0, "background"),
        (1, "sugar"),
        (2, "flour"),
        (3, "salt"),
        (4, "eraser"),
        (255, "ignore"),
    ]
    mask = read_mask(tmp_path / "scene_mask.png", shape=(3, 3))
    assert mask.legend == dict(enumerate(names))
    assert mask.colors == {0: "#808080", 1: "#ff0000", 2: "#00ff00", 3: "#0000ff", 4: "#ffff00"}
    np.testing.assert_array_equal(mask.values, SUGAR_SALT)


def test_a_class_map_reads_as_a_mask_with_its_names_and_colours(tmp_path):
    """One convention: class-map value 0 (unassigned) is no ground truth, classes keep 1, 2, ..."""
    from napari_dgc.analysis.classes import ClassMapping, SemanticClass
    from napari_dgc.analysis.export import write_class_map

    mapping = ClassMapping(
        [SemanticClass("sugar", "#ffffff", [0]), SemanticClass("salt", "#00ffff", [2])], n_clusters=3
    )
    class_map = mapping.apply(np.array([[0, 1], [2, 2]]))  # cluster 1 unassigned
    write_class_map(tmp_path / "scene_classes.tif", class_map, mapping)
    mask = read_mask(tmp_path / "scene_classes.tif", shape=(2, 2))
    assert mask.legend == {1: "sugar", 2: "salt"}
    assert mask.colors == {1: "#ffffff", 2: "#00ffff"}
    np.testing.assert_array_equal(mask.values, [[1, 255], [2, 2]])


def test_bad_legend_files_are_refused_naming_the_file(tmp_path):
    from napari_dgc.analysis.export import cluster_legend, write_label_map

    write_label_map(tmp_path / "scene_labels.npy", np.array([[0, 1]]), cluster_legend(2))
    with pytest.raises(MaskError, match="scene_labels.legend.json: the legend of a cluster map"):
        read_mask(tmp_path / "scene_labels.npy")
    np.save(tmp_path / "odd.npy", np.array([[0, 1]]))
    for values, problem in (
        ([{"value": 300, "name": "x"}], "value 300"),
        ([{"value": 1, "name": ""}], "has no name"),
        ([{"value": 1, "name": "a", "color": "red"}], "colour 'red'"),
        ([{"value": 0, "name": "a"}, {"value": 1, "name": "A"}], "repeats"),
    ):
        (tmp_path / "odd.legend.json").write_text(json.dumps({"kind": "mask", "values": values}))
        with pytest.raises(MaskError, match=problem) as info:
            read_mask(tmp_path / "odd.npy")
        assert "odd.legend.json" in str(info.value)
    (tmp_path / "odd.legend.json").write_text(
        json.dumps({"kind": "mask", "values": [{"value": 0, "name": "a"}]})
    )
    with pytest.raises(MaskError, match="unknown mask value"):
        read_mask(tmp_path / "odd.npy")


def test_drawn_shapes_are_rasterised_in_order_with_names_values_and_ignore():
    box = np.array([[1.0, 1.0], [1.0, 8.0], [8.0, 8.0], [8.0, 1.0]])
    shapes = [
        DrawnShape("rectangle", box, "Tissue"),  # a legend name, any case
        DrawnShape("ellipse", box + 10, "sugar"),  # a new name: the next value
        DrawnShape("polygon", np.array([[2.0, 2.0], [2.0, 4.0], [4.0, 4.0]]), 7),  # a value
        DrawnShape("rectangle", box + [0, 10], "ignore"),
    ]
    mask = mask_from_shapes(shapes, (20, 20), source="shapes layer")
    assert mask.legend == {0: "background", 1: "tissue", 2: "lesion", 3: "sugar", 7: "class 7"}
    assert mask.values[5, 5] == 1 and mask.values[2, 3] == 7  # drawn later, painted over
    assert mask.values[14, 14] == 3 and mask.values[11, 11] == 255  # ellipse centre in, box corner out
    assert mask.values[5, 15] == 255 and mask.values[0, 0] == 255 and mask.source == "shapes layer"


def test_shapes_by_order_and_the_rest_ignored():
    box = np.array([[0.0, 0.0], [0.0, 3.0], [3.0, 3.0], [3.0, 0.0]])
    mask = mask_from_shapes(
        [DrawnShape("polygon", box), DrawnShape("polygon", box + 5)], (10, 10), legend={1: "sugar"}
    )
    assert mask.legend == {1: "sugar", 2: "lesion"}  # the second shape: value 2
    assert mask.values[1, 1] == 1 and mask.values[6, 6] == 2 and mask.values[9, 0] == 255


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (DrawnShape("line", np.zeros((2, 2))), "encloses no pixels"),
        (DrawnShape("polygon", np.zeros((2, 2))), "has 2 vertices"),
        (DrawnShape("polygon", np.full((3, 2), np.nan)), "finite"),
        (DrawnShape("polygon", np.zeros((3, 2)), 300), "class value 300"),
    ],
)
def test_bad_shapes_are_refused(shape, message):
    with pytest.raises(MaskError, match=message):
        mask_from_shapes([shape], (4, 4))
