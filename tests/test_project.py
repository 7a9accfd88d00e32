"""Project files (napari_dgc.state.project): round trip, relative paths, hostile files refused whole."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from _training_helpers import N_BANDS, N_CLUSTERS, tiny_config, tiny_cube

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.state.project import (
    PROJECT_FORMAT,
    Project,
    ProjectCube,
    ProjectError,
    ProjectMask,
    load_project,
    mask_binning,
    project_path,
    read_project,
    save_project,
)
from napari_dgc.training.loop import train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a cube, a mask and a tiny finished run, as a user's project folder holds them."""
    folder = tmp_path_factory.mktemp("project")
    cube = tiny_cube(seed=1)
    np.save(folder / "leaf.npy", cube)
    np.save(folder / "leaf_mask.npy", np.zeros(cube.shape[:2], dtype=np.uint8))
    for _ in train([cube], tiny_config(steps=4), folder / "runs" / "leaf"):
        pass
    return folder


def a_project(folder, **changes) -> Project:
    mapping = ClassMapping(
        [SemanticClass("background", "#202020", [0]), SemanticClass("tissue", "#30a030", [2])], N_CLUSTERS
    )
    fields = dict(
        cubes=(ProjectCube("leaf", folder / "leaf.npy", band_axis=2),),
        run=folder / "runs" / "leaf",
        checkpoint="step-000002",
        mapping=mapping,
        masks=(ProjectMask("leaf", folder / "leaf_mask.npy"),),
        mask_class_names="background, tissue",
        scores={"format": "napari-dgc-evaluation", "version": 1, "pooled": {"mean_iou": 0.5}},
    )
    fields.update(changes)
    return Project(**fields)


def write_document(path, **changes) -> None:
    """Rewrite the saved project at ``path`` with top-level ``changes``."""
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_round_trip_keeps_everything_with_paths_relative_to_the_project(workspace):
    project = a_project(workspace)
    path = save_project(workspace / "leaf.dgcproj.json", project, overwrite=True)
    document = json.loads(path.read_text())
    assert document["format"] == PROJECT_FORMAT
    assert document["cubes"][0]["path"] == "leaf.npy"
    assert document["run"] == "runs/leaf"
    assert document["masks"] == [{"cube": "leaf", "path": "leaf_mask.npy"}]

    loaded = load_project(path)
    assert loaded == project
    assert loaded.mapping.to_json() == project.mapping.to_json()
    assert loaded.mapping.unassigned_clusters() == [1]  # a mapping being built stays partial
    assert loaded.scores == project.scores
    assert "1 cube(s), run leaf @ step-000002, 2 classes, 1 mask(s), mean IoU 0.5000" == loaded.describe()


def test_a_moved_project_folder_still_opens(workspace, tmp_path):
    save_project(workspace / "moved.dgcproj.json", a_project(workspace), overwrite=True)
    copy = tmp_path / "copy"
    shutil.copytree(workspace, copy)
    loaded = load_project(copy / "moved.dgcproj.json")
    assert loaded.cubes[0].path == copy / "leaf.npy"
    assert loaded.run == copy / "runs" / "leaf"


def test_files_outside_the_project_folder_are_stored_absolute(workspace, tmp_path):
    path = save_project(tmp_path / "elsewhere.dgcproj.json", a_project(workspace))
    document = json.loads(path.read_text())
    assert document["cubes"][0]["path"] == str(workspace / "leaf.npy")
    assert load_project(path).cubes[0].path == workspace / "leaf.npy"


def test_save_refuses_to_overwrite_and_leaves_no_temporary(workspace, tmp_path):
    path = save_project(tmp_path / "p.dgcproj.json", a_project(workspace))
    with pytest.raises(FileExistsError):
        save_project(path, a_project(workspace))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.dgcproj.json"]
    with pytest.raises(ProjectError, match="does not exist"):
        save_project(tmp_path / "no" / "p.dgcproj.json", a_project(workspace))


def test_project_path_adds_the_suffix():
    assert project_path("a/leaf").name == "leaf.dgcproj.json"
    assert project_path("a/leaf.dgcproj.json").name == "leaf.dgcproj.json"


@pytest.fixture
def saved(workspace):
    path = save_project(workspace / "hostile.dgcproj.json", a_project(workspace), overwrite=True)
    yield path
    path.unlink()


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        (
            {"cubes": [{"name": "x", "path": "../../../etc/passwd"}]},
            r"cubes\[0\]\.path",
            "outside the project",
        ),
        ({"run": "../"}, "run", "outside the project"),
        ({"masks": [{"cube": "leaf", "path": "../leaf_mask.npy"}]}, r"masks\[0\]\.path", "outside"),
        ({"cubes": {"name": "leaf"}}, "cubes", "expected a list"),
        ({"cubes": [{"name": 3, "path": "leaf.npy"}]}, r"cubes\[0\]\.name", "non-empty string"),
        (
            {"cubes": [{"name": "leaf", "path": "leaf.npy", "shape": [0, 2]}]},
            r"cubes\[0\]\.shape",
            "positive",
        ),
        (
            {"cubes": [{"name": "leaf", "path": "leaf.npy", "band_axis": True}]},
            r"cubes\[0\]\.band_axis",
            "0, 1, 2",
        ),
        ({"cubes": [{"name": "leaf", "path": "leaf.npy", "colour": 1}]}, r"cubes\[0\]", "unknown field"),
        ({"cubes": [{"name": "leaf", "path": "gone.npy"}]}, r"cubes\[0\]\.path", "does not exist"),
        ({"checkpoint": "step-999999"}, "checkpoint", "has no checkpoint 'step-999999'"),
        ({"run": None}, "checkpoint", "needs a run folder"),
        ({"run": "leaf.npy"}, "run", "not a folder"),
        ({"mapping": {"format": "napari-dgc-mapping", "classes": 5}}, "mapping", ""),
        ({"masks": [{"cube": "stem", "path": "leaf_mask.npy"}]}, r"masks\[0\]\.cube", "not one of"),
        ({"mask_class_names": ["a"]}, "mask_class_names", "a string"),
        ({"scores": [1, 2]}, "scores", "IoU report"),
        ({"version": 2}, "version", "unsupported"),
        ({"extra": 1}, "top level", "unknown field"),
    ],
)
def test_hostile_fields_are_refused_naming_file_and_field(saved, changes, field, problem):
    write_document(saved, **changes)
    with pytest.raises(ProjectError, match=rf"hostile\.dgcproj\.json: {field}: .*{problem}"):
        load_project(saved)


def test_a_link_inside_the_folder_that_leads_out_is_refused(saved, tmp_path):
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((4, 4, 4)))
    link = saved.parent / "link.npy"
    os.symlink(outside, link)
    try:
        write_document(saved, cubes=[{"name": "leaf", "path": "link.npy"}])
        with pytest.raises(ProjectError, match="resolves to .*outside the project folder"):
            load_project(saved)
        # The same file named by its absolute path is the user's choice.
        write_document(saved, cubes=[{"name": "leaf", "path": str(outside)}])
        assert load_project(saved).cubes[0].path == outside
    finally:
        link.unlink()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 100_000, "nested"),
        ("{not json", "not valid JSON"),
        ('{"format": "napari-dgc-mapping"}', "not a napari-dgc project"),
        ("[]", "not a napari-dgc project"),
    ],
)
def test_files_that_are_no_project_are_refused(tmp_path, text, problem):
    path = tmp_path / "bad.dgcproj.json"
    path.write_text(text)
    with pytest.raises(ProjectError, match=problem):
        load_project(path)


def test_missing_and_special_files_are_refused(tmp_path):
    with pytest.raises(ProjectError, match="no such napari-dgc project"):
        load_project(tmp_path / "none.dgcproj.json")
    fifo = tmp_path / "fifo.dgcproj.json"
    os.mkfifo(fifo)
    with pytest.raises(ProjectError, match="not a regular file"):
        load_project(fifo)


def test_read_project_opens_cubes_and_checks_masks_against_them(workspace, tmp_path):
    path = save_project(tmp_path / "ok.dgcproj.json", a_project(workspace))
    files = read_project(path)
    assert files.cubes["leaf"].shape_hw == (32, 32) and files.cubes["leaf"].n_bands == N_BANDS
    assert files.masks["leaf"].values.shape == (32, 32)

    np.save(tmp_path / "small_mask.npy", np.zeros((7, 9), dtype=np.uint8))
    project = a_project(workspace, masks=(ProjectMask("leaf", tmp_path / "small_mask.npy"),))
    bad = save_project(tmp_path / "bad.dgcproj.json", project)
    with pytest.raises(ProjectError, match=r"bad\.dgcproj\.json: masks\[0\]: .*small_mask\.npy is 7x9"):
        read_project(bad)
    np.save(tmp_path / "float_mask.npy", np.full((32, 32), 0.5))
    project = a_project(workspace, masks=(ProjectMask("leaf", tmp_path / "float_mask.npy"),))
    bad = save_project(tmp_path / "bad.dgcproj.json", project, overwrite=True)
    with pytest.raises(ProjectError, match=r"bad\.dgcproj\.json: masks\[0\]: .*float_mask\.npy"):
        read_project(bad)


@pytest.mark.parametrize(
    ("cube", "mask", "binning"),
    [((32, 32), (32, 32), 1), ((32, 30), (16, 15), 2), ((33, 31), (11, 10), 3), ((32, 32), (7, 9), None)],
)
def test_mask_binning(cube, mask, binning):
    assert mask_binning(cube, mask) == binning
