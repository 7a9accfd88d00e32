"""``napari-dgc train``: trains from files, resumes, and refuses bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dgc.cli import main
from napari_dgc.run_folder import RunDirectory

FAST = ["--crop-size", "12", "--batch-size", "2", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def cube_file(tmp_path, rng):
    labels = rng.random((24, 24)) < 0.5
    cube = np.where(labels[..., None], np.linspace(0, 1, 10), np.linspace(1, 0, 10))
    path = tmp_path / "scene.npy"
    np.save(path, (cube + 0.05 * rng.normal(size=cube.shape)).astype(np.float32))
    return path


def test_train_writes_checkpoints_and_resume_extends_the_run(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(cube_file),
            "--clusters",
            "2",
            "--steps",
            "2",
            "--starts",
            "1",
            "--checkpoint-every",
            "1",
            "--out",
            str(run),
            *FAST,
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "finished at step 2" in captured.out
    assert "step 2/2" in captured.err and "checkpoint step-000002 written" in captured.err
    assert [c.step for c in RunDirectory.open(run).checkpoints()] == [1, 2]
    assert RunDirectory.open(run).dataset_files == [str(cube_file.resolve())]

    code = main(
        ["train", str(cube_file), "--steps", "3", "--checkpoint-every", "1", "--resume", str(run), *FAST]
    )
    assert code == 0
    assert [c.step for c in RunDirectory.open(run).checkpoints()] == [1, 2, 3]


def test_train_with_three_starts_continues_the_best_separated(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(cube_file),
            "--clusters",
            "2",
            "--steps",
            "3",
            "--checkpoint-every",
            "2",
            "--out",
            str(run),
            *FAST,
            "--set",
            "starts.steps=2",
            "--set",
            "starts.count=3",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    err = captured.err
    opened = RunDirectory.open(run)
    assert [c.checkpoint_id for c in opened.checkpoints()][:3] == [
        "step-000002",
        "start1-step-000002",
        "start2-step-000002",
    ]
    selected = opened.selected_start
    scores = opened.start_scores
    assert len(scores) == 3 and scores[selected] == max(scores)
    assert opened.latest_checkpoint().checkpoint_id.endswith("step-000003")
    # The throttled line shows the last step; it counts the steps of all starts and says so.
    assert f"run step 7/7 (all starts)  start {selected} (starts 0–2) at its step 3  " in err
    # Issue 15 item 3: the last line says which start reached which step, and the run's steps.
    assert f"finished: start {selected} reached step 3 (7 run steps, all starts): {run}" in captured.out
    assert f"start {selected} continues (selection score of starts 0–2" in err
    code = main(["train", "--resume", str(run), "--starts", "1", *FAST])
    assert code == 2 and "new runs only" in _error_line(capsys)


def test_set_overrides_any_training_and_model_setting(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(cube_file),
            "--steps",
            "1",
            "--checkpoint-every",
            "1",
            "--out",
            str(run),
            *FAST,
            "--set",
            "optim.learning_rate=3e-4",
            "--set",
            "model.brightness_norm=false",
            "--set",
            "losses.anchor_final_fraction=0.5",
        ]
    )
    assert code == 0
    config = RunDirectory.open(run).config
    assert config.optim.learning_rate == 3e-4 and config.losses.anchor_final_fraction == 0.5
    assert config.model.brightness_norm is False and config.data.crop_size == 12
    capsys.readouterr()

    code = main(["train", "--resume", str(run), "--steps", "2", *FAST, "--set", "optim.learning_rate=1"])
    assert code == 2 and "new runs only" in _error_line(capsys)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--clusters", "1"], "n_clusters must be between 2 and 64"),
        (["--clusters", "100"], "n_clusters must be between 2 and 64"),
        (["--crop-size", "40"], "smaller than the 40 x 40 crop"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--threads", "0"], "--threads"),
        (["--set", "learning_rat=0.1"], "unknown training settings: learning_rat"),
        (["--set", "optim.learning_rat=0.1"], "unknown optim settings: learning_rat"),
        (["--set", "model=5"], "model is a group of settings"),
        (["--set", "steps=abc"], "steps must be a whole number"),
        (["--set", "optim.learning_rate=NaN"], "optim.learning_rate must be a finite number"),
        (["--set", "model.colour=red"], "unknown model settings: colour"),
        (["--set", "model.spatial_init=sideways"], "spatial_init must be one of"),
        (["--set", "losses.weight_balance=2"], "losses.weight_balance: retired"),
        (["--set", "learning_rate"], "KEY=VALUE"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(cube_file, tmp_path, capsys, arguments, message):
    run = tmp_path / "run"
    code = main(["train", str(cube_file), "--out", str(run), *FAST, *arguments])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("napari-dgc train: error:") and message in line
    assert not run.exists()


def test_missing_cube_file_is_reported(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "run"), *FAST])
    assert code == 2
    assert "nope.npy" in _error_line(capsys)


def test_resume_with_other_clusters_or_bands_is_refused(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", str(cube_file), "--clusters", "2", "--steps", "1", "--out", str(run), "--quiet", *FAST]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["train", str(cube_file), "--clusters", "3", "--resume", str(run), *FAST]) == 2
    assert "model.n_clusters = 2, not 3" in _error_line(capsys)
    other = tmp_path / "other.npy"
    np.save(other, np.load(cube_file)[..., :8])
    assert main(["train", str(other), "--resume", str(run), *FAST]) == 2
    assert "10 bands, not 8" in _error_line(capsys)


def test_resume_without_cubes_uses_the_runs_own_cubes(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(cube_file),
                "--clusters",
                "2",
                "--steps",
                "1",
                "--checkpoint-every",
                "1",
                "--starts",
                "1",
                "--out",
                str(run),
                "--quiet",
                *FAST,
            ]
        )
        == 0
    )
    assert main(["train", "--resume", str(run), "--steps", "2", "--quiet", *FAST]) == 0
    assert [c.step for c in RunDirectory.open(run).checkpoints()] == [1, 2]


def test_new_run_without_cubes_is_refused(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), *FAST])
    assert code == 2
    assert "at least one cube" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- issue 15, items 1, 3, 4
def _two_material_cube(rng, rows=24, cols=24, bands=10) -> np.ndarray:
    labels = rng.random((rows, cols)) < 0.5
    cube = np.where(labels[..., None], np.linspace(0, 1, bands), np.linspace(1, 0, bands))
    return (cube + 0.05 * rng.normal(size=cube.shape)).astype(np.float32)


def _train_args(cube_args: list[str], run, *extra: str) -> list[str]:
    return [
        "train",
        *cube_args,
        "--clusters",
        "2",
        "--steps",
        "2",
        "--starts",
        "1",
        "--checkpoint-every",
        "1",
        "--out",
        str(run),
        "--quiet",
        *FAST,
        *extra,
    ]


@pytest.mark.parametrize("stores_counts", [False, True])
def test_samson_like_2d_matrix_trains_with_shape_and_the_run_reopens_it(tmp_path, rng, capsys, stores_counts):
    """Item 1: --shape/--key exist on train, reach open_cube, and are recorded for --resume."""
    import scipy.io

    cube = _two_material_cube(rng)
    matrix = cube.reshape(24 * 24, 10, order="F").T  # bands x pixels, MATLAB column-major
    path = tmp_path / "samson_like.mat"
    variables = {"V": matrix, "other": np.zeros((3, 4, 2))}
    if stores_counts:
        variables.update(nRow=24, nCol=24)
    scipy.io.savemat(path, variables)
    run = tmp_path / "run"
    given = [] if stores_counts else ["--shape", "24", "24", "--key", "V"]
    assert main(_train_args([str(path)], run, *given)) == 0, capsys.readouterr().err
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["dataset_files"][0]["key"] == "V"
    assert manifest["dataset_files"][0]["shape"] == [24, 24]
    opened = RunDirectory.open(run)
    assert opened.dataset_open_options == [{"key": "V", "shape": (24, 24)}]
    # --resume without cubes reopens the cube as recorded (no --shape needed).
    assert main(["train", "--resume", str(run), "--steps", "3", "--quiet", *FAST]) == 0
    assert [c.step for c in RunDirectory.open(run).checkpoints()] == [1, 2, 3]


def test_samson_like_matrix_without_a_shape_is_one_line_naming_the_option(tmp_path, rng, capsys):
    import scipy.io

    path = tmp_path / "samson_like.mat"
    scipy.io.savemat(path, {"V": _two_material_cube(rng).reshape(576, 10, order="F").T})
    assert main(_train_args([str(path)], tmp_path / "run")) == 2
    assert "--shape ROWS COLS" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_train_help_offers_shape_and_key_and_says_what_steps_mean(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--shape ROWS COLS" in text and "--key K" in text
    assert "--resume RUN --steps N trains the continuing start on to step N" in text
    assert "steps + (starts - 1) x starts.steps" in text


def test_single_start_lines_are_unchanged(cube_file, tmp_path, capsys):
    run = tmp_path / "run"
    args = _train_args([str(cube_file)], run)
    args.remove("--quiet")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "step 2/2  loss" in captured.err and "run step" not in captured.err
    assert f"finished at step 2: {run}" in captured.out


def _png_band_folder(folder, cube: np.ndarray, wavelengths) -> None:
    from PIL import Image

    folder.mkdir()
    scaled = (cube / cube.max() * 60000).astype(np.uint16)
    for band, wavelength in enumerate(wavelengths):
        Image.fromarray(scaled[:, :, band]).save(folder / f"scene_{wavelength}nm.png")


def test_cli_run_on_a_png_band_folder_records_its_wavelengths(tmp_path, rng, capsys):
    """Item 4: the run stores the wavelengths info reads, not null."""
    wavelengths = [900 + 20 * i for i in range(10)]
    folder = tmp_path / "bands"
    _png_band_folder(folder, np.abs(_two_material_cube(rng)) + 0.1, wavelengths)
    run = tmp_path / "run"
    assert main(_train_args([str(folder)], run)) == 0, capsys.readouterr().err
    assert RunDirectory.open(run).wavelengths.tolist() == wavelengths
    assert json.loads((run / "run.json").read_text())["wavelengths"] == wavelengths


def test_cli_run_on_an_envi_cube_records_its_wavelengths(tmp_path, rng, capsys):
    from _io_helpers import write_envi

    wavelengths = [1000.5 + 10 * i for i in range(10)]
    header, _ = write_envi(tmp_path / "envi", _two_material_cube(rng), wavelengths=wavelengths)
    run = tmp_path / "run"
    assert main(_train_args([str(header)], run)) == 0, capsys.readouterr().err
    np.testing.assert_allclose(RunDirectory.open(run).wavelengths, wavelengths)


def test_training_from_paths_and_from_opened_cubes_records_the_same(tmp_path, rng):
    """Item 4: the engine takes the wavelengths from the opened sources, paths or cubes."""
    from napari_dgc.config import TrainConfig
    from napari_dgc.io import open_cube
    from napari_dgc.training.loop import train

    wavelengths = [900 + 20 * i for i in range(10)]
    folder = tmp_path / "bands"
    _png_band_folder(folder, np.abs(_two_material_cube(rng)) + 0.1, wavelengths)
    config = TrainConfig().with_settings(
        {"model.n_clusters": 2, "steps": 1, "starts.count": 1, "data.crop_size": 12, "data.batch_size": 2}
    )
    for name, cube in (("paths", str(folder)), ("cubes", open_cube(folder))):
        for _ in train([cube], config, tmp_path / name):
            pass
        assert RunDirectory.open(tmp_path / name).wavelengths.tolist() == wavelengths
