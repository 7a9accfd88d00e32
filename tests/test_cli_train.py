"""``napari-dgc train``: trains from files, resumes, and refuses bad input in one line."""

from __future__ import annotations

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


def test_train_by_default_tries_three_starts_and_continues_the_best_separated(cube_file, tmp_path, capsys):
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
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
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
    assert f"step 7/7  start {selected} (starts 0–2)" in err  # the throttled line shows the last step
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
            "losses.uniform_schedule=linear",
        ]
    )
    assert code == 0
    config = RunDirectory.open(run).config
    assert config.optim.learning_rate == 3e-4 and config.losses.uniform_schedule == "linear"
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
        (["--set", "losses.uniform_schedule=sideways"], "uniform_schedule must be one of"),
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
