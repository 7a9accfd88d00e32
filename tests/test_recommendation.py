"""The recommended checkpoint: the rule on internal signals, run.json, and who uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _training_helpers import tiny_config, tiny_cube

from napari_dgc.cli import main
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder import CheckpointInfo, RunDirectory
from napari_dgc.training.loop import train
from napari_dgc.training.recommendation import recommend


def info(step: int, separation: float | None, agreement: float | None = None) -> CheckpointInfo:
    stats = {} if separation is None else {"selection_score": separation}
    if agreement is not None:
        stats["agreement"] = agreement
    return CheckpointInfo(f"step-{step:06d}", step, stats)


def test_rule_prefers_stable_checkpoints_and_the_latest_of_equally_separated_ones():
    assert recommend([]) is None
    assert recommend([info(10, None)]) is None  # written before checkpoints had the signals
    # The best separation is an unstable checkpoint (agreement 0.5): the stable ones win.
    checkpoints = [info(10, 100.0), info(20, 300.0, 0.5), info(30, 200.0, 0.95), info(40, 199.0, 0.97)]
    chosen = recommend(checkpoints)
    assert chosen.checkpoint_id == "step-000040"  # within the tolerance of step 30's, and later
    assert "step-000030" not in chosen.reason and "separation" in chosen.reason
    # Nothing stable yet: the best-separated (latest of equals) of all.
    assert recommend([info(10, 100.0), info(20, 300.0, 0.5), info(30, 120.0, 0.6)]).checkpoint_id == (
        "step-000020"
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recommended") / "run"
    cube = tmp_path_factory.getbasetemp() / "cube.npy"
    np.save(cube, tiny_cube(seed=1))
    list(train([str(cube)], tiny_config(steps=6, checkpoint_every=2), folder))
    return folder, cube


def test_training_records_signals_and_a_recommendation(trained_run):
    folder, _ = trained_run
    run = RunDirectory.open(folder)
    checkpoints = run.checkpoints()
    assert all(c.stats["selection_score"] > 0 for c in checkpoints)
    assert "agreement" not in checkpoints[0].stats  # nothing to agree with yet
    assert all(0.0 <= c.stats["agreement"] <= 1.0 for c in checkpoints[1:])
    recommended = run.recommended_checkpoint
    assert recommended == recommend(checkpoints)
    assert run.default_checkpoint() == (
        next(c for c in checkpoints if c.checkpoint_id == recommended.checkpoint_id),
        f"recommended: {recommended.reason}",
    )


def test_default_checkpoint_is_chosen_then_recommended_then_latest(trained_run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder)
    run = RunDirectory.open(folder)
    ids = [c.checkpoint_id for c in run.checkpoints()]
    run.recommend(ids[0], "because")
    assert run.default_checkpoint()[0].checkpoint_id == ids[0]
    assert torch.equal(run.load_model().centroids, run.load_model(ids[0]).centroids)
    run.choose(ids[1])
    assert run.default_checkpoint() == (run.checkpoints()[1], "chosen by a person")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run.recommend("step-000999", "gone")
    manifest = json.loads(run.manifest_path.read_text())
    manifest["chosen_checkpoint"] = None
    manifest.pop("recommended_checkpoint")  # a run written before recommendations
    run.manifest_path.write_text(json.dumps(manifest))
    assert run.default_checkpoint() == (run.checkpoints()[-1], "the latest checkpoint")
    manifest["recommended_checkpoint"] = {"checkpoint_id": 3}
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="recommended_checkpoint"):
        run.default_checkpoint()


def test_segment_and_train_say_which_checkpoint_and_why(trained_run, tmp_path, capsys):
    folder, cube = trained_run
    recommended = RunDirectory.open(folder).recommended_checkpoint
    assert main(["segment", str(folder), str(cube), "--out", str(tmp_path / "maps")]) == 0
    assert f"using checkpoint {recommended.checkpoint_id}, recommended: " in capsys.readouterr().out
    options = [
        "--clusters",
        "3",
        "--steps",
        "2",
        "--checkpoint-every",
        "2",
        "--crop-size",
        "16",
        "--starts",
        "1",
    ]
    assert main(["train", str(cube), "--out", str(tmp_path / "run2"), *options, "--quiet"]) == 0
    assert "use: step-000002, recommended: " in capsys.readouterr().out
