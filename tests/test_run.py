"""Run folders: manifest, atomic checkpoints, validation, crash and full-disk safety."""

from __future__ import annotations

import errno
import json
import os
import pickle
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from napari_dgc import atomic
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.errors import CheckpointError
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import CheckpointInfo, RunDirectory

N_BANDS = 12


def small_config(**model_options) -> TrainConfig:
    options = dict(n_clusters=3, embed_dim=8, meanshift_iters=1, meanshift_window=3)
    options.update(model_options)
    return TrainConfig(model=ModelConfig(**options), steps=20, seed=5)


@pytest.fixture
def config() -> TrainConfig:
    return small_config()


@pytest.fixture
def cube_file(tmp_path):
    path = tmp_path / "cube.npy"
    np.save(path, np.zeros((4, 4, N_BANDS), np.float32))
    return path


@pytest.fixture
def run(tmp_path, config, cube_file) -> RunDirectory:
    return RunDirectory.create(
        tmp_path / "run", config, N_BANDS, np.linspace(400, 1000, N_BANDS), [cube_file], seed=5
    )


def train_state(model: DGCModel, seed: int) -> tuple[torch.optim.Optimizer, dict]:
    """One AdamW step on random data, so the optimizer has per-parameter state."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, probabilities = model(torch.rand(1, N_BANDS, 6, 6))
    probabilities.square().mean().backward()
    optimizer.step()
    return optimizer, {
        "rng": torch.get_rng_state(),
        "sampler": {"cube": 1, "position": (3, 4)},
        "tensors": {"usage": torch.arange(3.0)},
    }


def save(
    run: RunDirectory, step: int, seed: int = 0, **where
) -> tuple[DGCModel, torch.optim.Optimizer, dict]:
    """Write a checkpoint of a random model; ``where``: ``start`` and ``run_step``."""
    torch.manual_seed(seed)
    model = DGCModel(N_BANDS, run.config.model)
    optimizer, state = train_state(model, seed)
    run.save_checkpoint(
        step,
        model.state_dict(),
        optimizer.state_dict(),
        state,
        {"loss": np.float32(0.5), "active_clusters": 3},
        **where,
    )
    return model, optimizer, state


def test_create_writes_manifest_and_open_round_trips(run, config, cube_file):
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["config"] == config.to_dict()
    assert manifest["n_bands"] == N_BANDS and manifest["seed"] == 5
    assert manifest["dataset_files"] == [
        {"path": str(cube_file.resolve()), "size_bytes": cube_file.stat().st_size}
    ]
    assert {"python", "torch", "numpy", "napari-dgc"} <= manifest["versions"].keys()
    assert manifest["chosen_checkpoint"] is None and manifest["checkpoints"] == []
    reopened = RunDirectory.open(run.path)
    assert reopened.config.to_dict() == config.to_dict()
    np.testing.assert_allclose(reopened.wavelengths, np.linspace(400, 1000, N_BANDS))
    assert reopened.dataset_files == [str(cube_file.resolve())]
    assert reopened.checkpoints() == [] and reopened.latest_checkpoint() is None
    assert RunDirectory.open(run.manifest_path).path == run.path


def test_create_refuses_existing_run_and_bad_arguments(run, config, tmp_path):
    with pytest.raises(CheckpointError, match="run.json.*already exists"):
        RunDirectory.create(run.path, config, N_BANDS, None, [], seed=0)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="file.txt.*not a run folder"):
        RunDirectory.create(a_file, config, N_BANDS, None, [], seed=0)
    with pytest.raises(CheckpointError, match="3 wavelengths given for 12 bands"):
        RunDirectory.create(tmp_path / "other", config, N_BANDS, [1, 2, 3], [], seed=0)


def test_ensure_compatible(run, config):
    run.ensure_compatible(TrainConfig(model=config.model, steps=999), N_BANDS)
    with pytest.raises(CheckpointError, match="12 bands, not 13"):
        run.ensure_compatible(config, 13)
    with pytest.raises(CheckpointError, match="model settings differ"):
        run.ensure_compatible(small_config(n_clusters=4), N_BANDS)


def test_checkpoint_round_trip_resumes_identically(run):
    model, optimizer, state = save(run, 100, seed=1)
    assert run.checkpoints() == [CheckpointInfo("step-000100", 100, {"loss": 0.5, "active_clusters": 3})]
    folder = run.path / "checkpoints" / "step-000100"
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "optimizer.safetensors",
        "training.safetensors",
        "state.json",
    }
    model_state, optimizer_state, training_state = run.load_checkpoint_state("step-000100")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(model_state[name], tensor, rtol=0, atol=0)
    assert training_state["sampler"] == {"cube": 1, "position": (3, 4)}
    assert torch.equal(training_state["rng"], state["rng"])
    torch.testing.assert_close(training_state["tensors"]["usage"], torch.arange(3.0))

    # A restored optimizer takes exactly the same next step as the original one.
    restored = DGCModel(N_BANDS, run.config.model)
    restored.load_state_dict(model_state)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    restored_optimizer.load_state_dict(optimizer_state)
    batch = torch.rand(1, N_BANDS, 6, 6)
    for net, opt in ((model, optimizer), (restored, restored_optimizer)):
        opt.zero_grad()
        net(batch)[1].square().mean().backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_load_model_latest_chosen_and_equal_outputs(run):
    first, *_ = save(run, 100, seed=1)
    second, *_ = save(run, 200, seed=2)
    x = torch.rand(1, N_BANDS, 7, 7)
    reopened = RunDirectory.open(run.path)
    latest = reopened.load_model()
    assert not latest.training
    torch.testing.assert_close(latest.embed(x), second.eval().embed(x))
    reopened.choose("step-000100")
    assert RunDirectory.open(run.path).chosen_checkpoint == "step-000100"
    torch.testing.assert_close(reopened.load_model().embed(x), first.eval().embed(x))
    torch.testing.assert_close(reopened.load_model("step-000200").embed(x), second.embed(x))
    with pytest.raises(CheckpointError, match="no checkpoint 'step-000300'"):
        reopened.choose("step-000300")
    with pytest.raises(CheckpointError, match="already exists"):
        save(run, 200)


def test_starts_are_listed_in_training_order_and_the_selected_one_is_the_latest(run):
    save(run, 2, seed=1)
    second, *_ = save(run, 2, seed=2, start=1, run_step=4)
    save(run, 2, seed=3, start=2, run_step=6)
    reopened = RunDirectory.open(run.path)
    assert [(c.checkpoint_id, c.start, c.run_step) for c in reopened.checkpoints()] == [
        ("step-000002", 0, 2),
        ("start1-step-000002", 1, 4),
        ("start2-step-000002", 2, 6),
    ]
    assert reopened.latest_checkpoint().checkpoint_id == "start2-step-000002"
    assert reopened.selected_start is None and reopened.start_scores is None
    with pytest.raises(CheckpointError, match="start 3 has no checkpoint"):
        reopened.record_selection(3, [1.0, 2.0, 3.0, 4.0])
    reopened.record_selection(1, [1.0, np.float64(5.0), 2.0])
    assert (reopened.selected_start, reopened.start_scores) == (1, [1.0, 5.0, 2.0])
    # The selected start's checkpoints are the run's from now on, though listed before others.
    assert reopened.latest_checkpoint().checkpoint_id == "start1-step-000002"
    x = torch.rand(1, N_BANDS, 7, 7)
    torch.testing.assert_close(reopened.load_model().embed(x), second.eval().embed(x))
    save(run, 3, seed=4, start=1, run_step=7)
    assert [c.checkpoint_id for c in reopened.checkpoints(start=1)] == [
        "start1-step-000002",
        "start1-step-000003",
    ]
    assert reopened.latest_checkpoint().checkpoint_id == "start1-step-000003"
    manifest = json.loads(run.manifest_path.read_text())
    for key, bad in [("selected_start", "1"), ("start_scores", 3.0)]:
        run.manifest_path.write_text(json.dumps({**manifest, key: bad}))
        with pytest.raises(CheckpointError, match=f"run.json: field '{key}' is invalid"):
            RunDirectory.open(run.path)


def test_load_model_without_checkpoints(run):
    with pytest.raises(CheckpointError, match="no checkpoints yet"):
        run.load_model()


def test_open_rejects_missing_corrupt_and_truncated_manifest(run, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*run.json.*not found"):
        RunDirectory.open(tmp_path / "nowhere")
    text = run.manifest_path.read_text()
    run.manifest_path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="run.json: corrupt or truncated"):
        RunDirectory.open(run.path)
    manifest = json.loads(text)
    for key, bad in [("n_bands", "12"), ("wavelengths", [1.0]), ("checkpoints", {"id": "step-000001"})]:
        run.manifest_path.write_text(json.dumps({**manifest, key: bad}))
        with pytest.raises(CheckpointError, match=f"run.json: field '{key}'"):
            RunDirectory.open(run.path)
    # A bad entry (an id that would become a path outside the run) is set aside, never used.
    run.manifest_path.write_text(json.dumps({**manifest, "checkpoints": [{"id": "../x"}]}))
    reopened = RunDirectory.open(run.path)
    assert reopened.checkpoints() == [] and len(reopened.rejected_checkpoints()) == 1
    with pytest.raises(CheckpointError, match="no checkpoint '../x'"):
        reopened.load_model("../x")
    run.manifest_path.write_text(json.dumps({**manifest, "config": {"steps": "many"}}))
    with pytest.raises(CheckpointError, match="run.json: invalid training configuration"):
        RunDirectory.open(run.path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_checkpoint_file_is_named(run, damage):
    save(run, 100)
    file = run.path / "checkpoints" / "step-000100" / "model.safetensors"
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-3] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="step-000100/model.safetensors: checksum mismatch"):
        run.load_model()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        run.load_checkpoint_state("step-000100")


def _set_listed_digest(run: RunDirectory, name: str, digest: str | None) -> None:
    manifest = json.loads(run.manifest_path.read_text())
    files = manifest["checkpoints"][0]["files"]
    if digest is None:
        files.pop(name)
    else:
        files[name] = digest
    run.manifest_path.write_text(json.dumps(manifest))


class _Marker:
    def __reduce__(self):
        return (open, ("/tmp/napari-dgc-unpickled-marker", "w"))


def test_never_unpickles_and_rejects_garbage(run):
    from napari_dgc.atomic import file_sha256

    save(run, 100)
    file = run.path / "checkpoints" / "step-000100" / "model.safetensors"
    file.write_bytes(pickle.dumps({"weights": _Marker()}))
    _set_listed_digest(run, "model.safetensors", file_sha256(file))  # as if the file were genuine
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        run.load_model()
    assert not os.path.exists("/tmp/napari-dgc-unpickled-marker")


def test_weights_that_do_not_fit_the_configuration(run):
    save(run, 100)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["config"]["model"]["n_clusters"] = 5
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor .* has shape"):
        RunDirectory.open(run.path).load_model()
    manifest["config"]["model"]["n_clusters"] = 3
    manifest["n_bands"], manifest["wavelengths"] = N_BANDS + 1, None
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="weights for 12 bands, but the run has 13"):
        RunDirectory.open(run.path).load_model()


def test_full_disk_at_any_write_keeps_previous_checkpoints(run, monkeypatch):
    """Fail the k-th file write of a checkpoint with ENOSPC, half-way through, for every k."""
    first, *_ = save(run, 100, seed=1)
    original_open = atomic.atomic_open
    x = torch.rand(1, N_BANDS, 5, 5)
    expected = first.eval().embed(x)
    manifest_before = run.manifest_path.read_bytes()

    k = 0
    while True:
        k += 1
        calls = 0

        @contextmanager
        def failing_open(path, mode="wb", fail_at=k):
            nonlocal calls
            calls += 1
            with original_open(path, mode) as handle:
                if calls == fail_at:
                    handle.write(b"\0" * 7 if "b" in mode else "partial")
                    raise OSError(errno.ENOSPC, "No space left on device")
                yield handle

        monkeypatch.setattr(atomic, "atomic_open", failing_open)
        try:
            save(run, 200, seed=2)
        except CheckpointError as error:
            assert "step-000200" in str(error) and "No space left" in str(error)
            monkeypatch.setattr(atomic, "atomic_open", original_open)
            assert run.manifest_path.read_bytes() == manifest_before
            assert [c.checkpoint_id for c in run.checkpoints()] == ["step-000100"]
            assert not (run.path / "checkpoints" / "step-000200").exists()
            torch.testing.assert_close(RunDirectory.open(run.path).load_model().embed(x), expected)
            continue
        monkeypatch.setattr(atomic, "atomic_open", original_open)
        break
    assert k == 6  # model, optimizer, training tensors, state.json, run.json all failed once
    assert [c.step for c in run.checkpoints()] == [100, 200]


def test_live_reader_sees_run_grow_while_choose_and_save_interleave(run):
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()
    save(run, 100)

    def reader():
        viewer = RunDirectory.open(run.path)
        while not done.is_set():
            try:
                seen.append(len(viewer.checkpoints()))
                viewer.choose("step-000100")
            except BaseException as error:
                errors.append(error)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(200, 700, 100):
            save(run, step)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert seen == sorted(seen) and seen[-1] <= 6
    assert [c.step for c in run.checkpoints()] == [100, 200, 300, 400, 500, 600]
    assert run.chosen_checkpoint == "step-000100"
