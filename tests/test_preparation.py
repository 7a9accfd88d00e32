"""Calibration and preparation: band crop, white/dark references, binning, stored with the run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _io_helpers import write_envi

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.analysis.export import export_model_folder
from napari_dgc.cli import main
from napari_dgc.config import ModelConfig, PrepConfig, TrainConfig
from napari_dgc.errors import CheckpointError, ConfigError, CubeFormatError
from napari_dgc.inference.checkpoint_review import CheckpointReview
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.io import open_cube
from napari_dgc.io.preparation import Preparation, read_reference
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.preparation_file import PREPARATION_FILE, run_preparation
from napari_dgc.training.loop import train
from napari_dgc.training.sampling import open_sources

ROWS, COLS, BANDS = 20, 18, 8
WAVELENGTHS = np.linspace(400.0, 1100.0, BANDS)  # 400, 500, ..., 1100 nm


def prep(**settings) -> PrepConfig:
    return PrepConfig(**settings)


@pytest.fixture
def scene(rng) -> np.ndarray:
    """A raw cube in counts: a column-dependent illumination times a reflectance, plus dark."""
    reflectance = rng.uniform(0.1, 0.9, (ROWS, COLS, BANDS)).astype(np.float32)
    return (100.0 + 1000.0 * np.linspace(0.5, 1.0, COLS)[None, :, None] * reflectance).astype(np.float32)


@pytest.fixture
def files(tmp_path, scene, rng) -> dict:
    """The scene as ENVI (with wavelengths), white and dark reference cubes as .npy files."""
    white = (100.0 + 1000.0 * np.linspace(0.5, 1.0, COLS)[None, :, None]) * np.ones((6, COLS, BANDS))
    white = white + rng.normal(0, 1, white.shape)
    dark = 100.0 + rng.normal(0, 1, (5, COLS, BANDS))
    header, _ = write_envi(tmp_path, scene, name="scene", wavelengths=WAVELENGTHS)
    np.save(tmp_path / "white.npy", white.astype(np.float32))
    np.save(tmp_path / "dark.npy", dark.astype(np.float32))
    return {
        "scene": header,
        "white": tmp_path / "white.npy",
        "dark": tmp_path / "dark.npy",
        "white_values": white.astype(np.float32),
        "dark_values": dark.astype(np.float32),
    }


def tiny_config(**prep_settings) -> TrainConfig:
    config = TrainConfig(model=ModelConfig(n_clusters=3, embed_dim=8, meanshift_iters=1))
    settings = {
        "steps": 4,
        "checkpoint_every": 2,
        "data.crop_size": 8,
        "data.batch_size": 1,
        "starts.count": 1,
        "device": "cpu",
    }
    settings.update({f"prep.{key}": value for key, value in prep_settings.items()})
    return config.with_settings(settings)


# ---------------------------------------------------------------------- the arithmetic


def test_reflectance_is_raw_minus_dark_over_white_minus_dark_per_column(files, scene):
    preparation = Preparation.from_settings(prep(white=str(files["white"]), dark=str(files["dark"])))
    prepared = preparation.apply(open_cube(files["scene"]))
    white = files["white_values"].mean(axis=0, dtype=np.float64)
    dark = files["dark_values"].mean(axis=0, dtype=np.float64)
    expected = (scene - dark) / (white - dark)
    assert prepared.shape_hw == (ROWS, COLS) and prepared.n_bands == BANDS
    np.testing.assert_allclose(prepared.read_window(slice(None), slice(None)), expected, rtol=1e-5)
    # A window reads the same values as the whole cube at that place (per-column references).
    np.testing.assert_allclose(
        prepared.read_window(slice(3, 9), slice(5, 11)), expected[3:9, 5:11], rtol=1e-5
    )


def test_reference_rows_of_a_cube_and_one_spectrum(files, scene):
    rows = read_reference(files["white"], (2, 5), "columns", "white")
    np.testing.assert_allclose(rows.spectra, files["white_values"][2:5].mean(axis=0), rtol=1e-6)
    assert rows.spectra.shape == (COLS, BANDS) and "rows 2:5" in rows.source
    spectrum = read_reference(files["white"], None, "spectrum", "white")
    np.testing.assert_allclose(spectrum.spectra[0], files["white_values"].mean(axis=(0, 1)), rtol=1e-5)
    # One spectrum applies to every column of any width; rows of the scene itself can be the white.
    preparation = Preparation.from_settings(
        prep(white=str(files["scene"]), white_rows="0:4", reference="spectrum")
    )
    prepared = preparation.apply(open_cube(files["scene"]))
    white = scene[0:4].mean(axis=(0, 1))
    np.testing.assert_allclose(prepared.read_window(slice(None), slice(None)), scene / white, rtol=1e-5)


def test_band_crop_by_wavelength_and_by_index(files, scene):
    cube = open_cube(files["scene"])
    by_nm = Preparation.from_settings(prep(bands="450:950")).apply(cube)
    np.testing.assert_array_equal(by_nm.wavelengths, [500, 600, 700, 800, 900])
    np.testing.assert_array_equal(by_nm.read_window(slice(None), slice(None)), scene[..., 1:6])
    np.testing.assert_array_equal(by_nm.read_bands([0, 4]), np.moveaxis(scene[..., [1, 5]], -1, 0))
    by_index = Preparation.from_settings(prep(band_indices="2:4")).apply(cube)
    np.testing.assert_array_equal(by_index.wavelengths, [600, 700])
    # The references are cropped with the cube: their values at the dropped bands do not matter.
    white = files["white_values"].copy()
    white[..., 0] = 0.0  # below the dark level, but band 0 is cropped away
    np.save(files["white"], white)
    cropped = Preparation.from_settings(
        prep(white=str(files["white"]), dark=str(files["dark"]), bands="450:1100")
    ).apply(cube)
    assert cropped.n_bands == BANDS - 1


def test_binning_averages_blocks_and_drops_partial_ones(scene, rng):
    cube = Preparation(binning=3).apply(scene, "scene")
    assert cube.shape_hw == (ROWS // 3, COLS // 3)
    expected = scene[:18, :18].reshape(6, 3, 6, 3, BANDS).mean(axis=(1, 3))
    whole = cube.read_window(slice(None), slice(None))
    np.testing.assert_allclose(whole, expected, rtol=1e-6)
    for _ in range(10):  # any window, with steps or reversed, agrees with the whole
        top, left = rng.integers(0, 5, size=2)
        rows, cols = slice(top, 6, int(rng.integers(1, 3))), slice(5, left - 1 if left else None, -1)
        np.testing.assert_array_equal(cube.read_window(rows, cols), whole[rows, cols])
    np.testing.assert_array_equal(np.asarray(cube.bands_first()[2]), whole[..., 2])


def test_no_preparation_leaves_cubes_untouched(scene):
    preparation = Preparation.from_settings(PrepConfig())
    assert preparation.is_identity and preparation.apply(scene) is scene
    assert open_sources([scene], preparation)[0]._array is scene


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bands": "950:450"}, "0 <= START < STOP"),
        ({"bands": "blue"}, "prep.bands must look like START:STOP"),
        ({"band_indices": "1.5:4"}, "whole numbers"),
        ({"bands": "400:500", "band_indices": "0:2"}, "not both"),
        ({"white_rows": "0:4"}, "without a white reference"),
        ({"binning": 0}, "prep.binning must be at least 1"),
    ],
)
def test_invalid_settings_are_refused_by_name(settings, message):
    with pytest.raises(ConfigError, match=message):
        PrepConfig(**settings)


def test_bad_references_are_named_with_their_problem(files, tmp_path):
    cube = open_cube(files["scene"])

    def refused(error, match, **settings):
        with pytest.raises(error, match=match):
            Preparation.from_settings(prep(**settings)).apply(cube)

    np.save(tmp_path / "narrow.npy", files["white_values"][:, :5])
    refused(
        CubeFormatError,
        r"narrow\.npy: the white reference is 5 columns wide.*18",
        white=str(tmp_path / "narrow.npy"),
    )
    np.save(tmp_path / "bands.npy", files["white_values"][..., :5])
    refused(CubeFormatError, r"bands\.npy.*has 5 bands, the cube .*has 8", white=str(tmp_path / "bands.npy"))
    nan = files["white_values"].copy()
    nan[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    refused(
        CubeFormatError,
        r"nan\.npy: the white reference holds a NaN.*row 1, column 2, band 3",
        white=str(tmp_path / "nan.npy"),
    )
    refused(
        CubeFormatError,
        r"dark\.npy: the white reference is not above the dark reference at band 0 \(400\.0 nm\), column 0",
        white=str(files["dark"]),
        dark=str(files["white"]),
    )
    refused(CubeFormatError, r"rows 2:9 lie outside its 5 rows", dark=str(files["dark"]), dark_rows="2:9")
    refused(CubeFormatError, "no such file", white=str(tmp_path / "missing.hdr"))
    refused(ConfigError, r"no band lies in 1200-1300 nm \(the cube has 400.0-1100.0 nm\)", bands="1200:1300")
    refused(ConfigError, "binning 30 x 30 is larger than the cube", binning=30)
    with pytest.raises(ConfigError, match="no wavelengths.*prep.band_indices"):
        Preparation.from_settings(prep(bands="400:500")).apply(np.zeros((4, 4, 3), np.float32), "array 0")


def test_a_bad_reference_fails_before_training_writes_anything(files, tmp_path):
    np.save(tmp_path / "narrow.npy", files["white_values"][:, :5])
    config = tiny_config(white=str(tmp_path / "narrow.npy"))
    with pytest.raises(CubeFormatError, match="5 columns wide"):
        next(train([files["scene"]], config, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_panel_start_check_applies_the_preparation(files, scene, tmp_path):
    from types import SimpleNamespace

    from napari_dgc.state.training import check_start

    layer = SimpleNamespace(key="1", name="leaf", cube=scene)
    np.save(tmp_path / "narrow.npy", files["white_values"][:, :5])
    with pytest.raises(CubeFormatError, match="5 columns wide"):
        check_start(tiny_config(white=str(tmp_path / "narrow.npy")), tmp_path / "run", [layer])
    # Binning 4 leaves 5 x 4 pixels, smaller than the 8-pixel crop: refused before Start too.
    with pytest.raises(CubeFormatError, match=r"layer \"leaf\" is 5 x 4 pixels"):
        check_start(tiny_config(binning=4), tmp_path / "run", [layer])
    check_start(tiny_config(white=str(files["white"]), binning=2), tmp_path / "run", [layer])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- runs


def test_the_run_stores_its_preparation_and_segmentation_sees_the_training_pixels(files, tmp_path):
    config = tiny_config(white=str(files["white"]), dark=str(files["dark"]), bands="450:950", binning=2)
    for _ in train([files["scene"]], config, tmp_path / "run"):
        pass
    run = RunDirectory.open(tmp_path / "run")
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["config"]["prep"]["bands"] == "450:950" and manifest["config"]["prep"]["binning"] == 2
    assert run.n_bands == 5 and run.wavelengths.tolist() == [500, 600, 700, 800, 900]
    assert (run.path / PREPARATION_FILE).is_file()
    # The references are the run's own: later changes to the files change nothing.
    os.remove(files["white"])
    stored = run_preparation(run)
    trained = open_sources(
        [files["scene"]], Preparation.from_settings(config.prep, {"white": stored.white, "dark": stored.dark})
    )[0]
    segmented = stored.apply(open_cube(files["scene"]))
    np.testing.assert_array_equal(
        trained.read_window(slice(0, ROWS // 2), slice(0, COLS // 2)),
        segmented.read_window(slice(0, ROWS // 2), slice(0, COLS // 2)),
    )
    model = run.load_model()
    expected = segment_cube(model, segmented).labels
    assert expected.shape == (ROWS // 2, COLS // 2)
    review = CheckpointReview(run.path, {"scene": open_cube(files["scene"])})
    np.testing.assert_array_equal(review.labels(run.latest_checkpoint().checkpoint_id)["scene"], expected)
    # Resuming uses the stored references too (the white file is gone).
    for _ in train([files["scene"]], config.with_settings({"steps": 6}), run.path, resume=True):
        pass
    assert run.latest_checkpoint().step == 6


def test_a_run_without_its_preparation_file_or_with_one_leaving_it_is_refused(files, tmp_path):
    config = tiny_config(white=str(files["white"]))
    for _ in train([files["scene"]], config, tmp_path / "run"):
        pass
    run = RunDirectory.open(tmp_path / "run")
    stored = run.path / PREPARATION_FILE
    outside = tmp_path / "elsewhere.safetensors"
    stored.rename(outside)
    with pytest.raises(CheckpointError, match="preparation.safetensors: missing"):
        run_preparation(run)
    stored.symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the run folder"):
        run_preparation(run)
    stored.unlink()
    stored.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        run_preparation(run)


# ---------------------------------------------------------------------- the command line

FAST = ["--clusters", "3", "--steps", "4", "--checkpoint-every", "2", "--crop-size", "8"]
FAST += ["--starts", "1", "--batch-size", "1", "--device", "cpu", "--threads", "1", "--quiet"]


def test_cli_train_options_are_stored_and_segment_applies_them(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "scene.hdr", "--out", "run", "--white", "white.npy", "--dark", "dark.npy"]
    argv += ["--bands", "450:950", "--binning", "2", "--set", "prep.dark_rows=1:4", *FAST]
    assert main(argv) == 0
    prep_settings = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["prep"]
    assert prep_settings["white"] == str(tmp_path / "white.npy")  # absolute: the run is read elsewhere
    assert prep_settings["dark_rows"] == "1:4" and prep_settings["bands"] == "450:950"
    assert main(["segment", "run", "scene.hdr", "--out", "labels", "--format", "npy", "--quiet"]) == 0
    run = RunDirectory.open(tmp_path / "run")
    expected = segment_cube(run.load_model(), run_preparation(run).apply(open_cube(files["scene"]))).labels
    np.testing.assert_array_equal(np.load(tmp_path / "labels" / "scene_labels.npy"), expected)
    manifest = json.loads((tmp_path / "labels" / "segment-manifest.json").read_text())
    assert manifest["identity"]["preparation"]["binning"] == 2
    # An exported model folder carries the preparation: segment --classes applies it too.
    mapping = ClassMapping(
        [SemanticClass("background", "#000000", [0]), SemanticClass("leaf", "#00ff00", [1, 2])], n_clusters=3
    )
    export_model_folder(run, tmp_path / "model", mapping)
    os.remove(tmp_path / "white.npy")
    assert (
        main(["segment", "--classes", "model", "scene.hdr", "--out", "classes", "--format", "npy", "--quiet"])
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "classes" / "scene_labels.npy"), expected)
    # The spectra of the binned map are those of the prepared cube (5 bands), given the run.
    spectra = ["spectra", "labels/scene_labels.npy", "scene.hdr", "--out", "spectra.csv"]
    assert main(spectra) == 2 and "the map is 10x9, the cube 20x18" in capsys.readouterr().err
    assert main([*spectra, "--run", "run"]) == 0
    assert "x 5 bands" in capsys.readouterr().out
    # A cube the references do not fit is refused before anything is segmented.
    write_envi(tmp_path, np.ones((ROWS, COLS + 2, BANDS), np.float32), name="wide", wavelengths=WAVELENGTHS)
    capsys.readouterr()
    assert main(["segment", "run", "wide.hdr", "--out", "wide", "--quiet"]) == 2
    assert "the white reference is 18 columns wide, the cube" in capsys.readouterr().err
    assert not (tmp_path / "wide").exists()


def test_segment_reopens_the_run_cubes_with_their_recorded_shape(tmp_path, rng):
    from scipy.io import savemat

    cube = rng.random((12, 10, 6)).astype(np.float32)
    savemat(tmp_path / "matrix.mat", {"Y": cube.reshape(120, 6, order="F").T})
    argv = ["train", str(tmp_path / "matrix.mat"), "--out", str(tmp_path / "run"), "--shape", "12", "10"]
    assert main([*argv, "--key", "Y", *FAST]) == 0
    out = tmp_path / "labels"
    assert (
        main(["segment", str(tmp_path / "run"), str(tmp_path / "matrix.mat"), "--out", str(out), "--quiet"])
        == 0
    )
    assert json.loads((out / "segment-manifest.json").read_text())["cubes"][0]["rows"] == 12
