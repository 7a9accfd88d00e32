"""Run folders under concurrency, kills, hostile edits and full disks (issue 16).

* one writer at a time: the run lock, held for a training's lifetime, released by a kill;
* one bad ``run.json`` entry costs only its checkpoint; checksums cannot be switched off;
* nothing is written outside the run folder; temporaries of dead writers are cleaned; the umask
  is honoured;
* a full disk or refused settings leave no run folder behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dgc import atomic
from napari_dgc.cli import main
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.errors import CheckpointError
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.lock import RunLock
from napari_dgc.training.loop import train

N_BANDS = 10


def tiny_config(**settings) -> TrainConfig:
    model = ModelConfig(n_clusters=2, embed_dim=8, spectral_channels=4, spectral_bands=8, meanshift_iters=2)
    base = {
        "steps": 6,
        "checkpoint_every": 3,
        "data.crop_size": 12,
        "data.batch_size": 2,
        "data.pairs_per_cube": 2,
        "device": "cpu",
        "seed": 3,
        "starts.count": 1,
    }
    base.update(settings)
    return TrainConfig(model=model).with_settings(base)


@pytest.fixture
def cubes(rng) -> list[np.ndarray]:
    result = []
    for _ in range(2):
        labels = rng.random((24, 24)) < 0.5
        spectra = np.where(labels[..., None], np.linspace(0, 1, N_BANDS), np.linspace(1, 0, N_BANDS))
        result.append((spectra + 0.05 * rng.normal(size=spectra.shape)).astype(np.float32))
    return result


@pytest.fixture
def trained(cubes, tmp_path) -> Path:
    """A finished 6-step run with checkpoints 3 and 6."""
    list(train(cubes, tiny_config(), tmp_path / "run"))
    return tmp_path / "run"


def _ids(run_path: Path) -> list[str]:
    return [entry["id"] for entry in json.loads((run_path / "run.json").read_text())["checkpoints"]]


# ---------------------------------------------------------------- 1. one writer at a time
def test_a_second_training_generator_is_refused_while_the_first_runs(cubes, trained):
    first = train(cubes, tiny_config(steps=12), trained, resume=True)
    next(first)  # holds the run lock from now until it is closed
    second = train(cubes, tiny_config(steps=12), trained, resume=True)
    message = f"run {trained} is busy: trained by pid {os.getpid()} on host {socket.gethostname()} since"
    with pytest.raises(CheckpointError, match=message):
        next(second)
    holder = RunDirectory.open(trained).holder()
    assert holder is not None and holder.pid == os.getpid() and RunDirectory.open(trained).is_busy()
    first.close()
    assert RunDirectory.open(trained).holder() is None and not RunDirectory.open(trained).is_busy()
    list(train(cubes, tiny_config(steps=9), trained, resume=True))
    assert _ids(trained) == ["step-000003", "step-000006", "step-000009"]


def test_two_threads_resuming_one_run_never_duplicate_a_checkpoint(cubes, trained):
    outcomes: list[str] = []

    def resume() -> None:
        try:
            list(train(cubes, tiny_config(steps=15), trained, resume=True))
            outcomes.append("trained")
        except CheckpointError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[-1] == "trained"
    assert all(outcome == "trained" or "is busy: trained by pid" in outcome for outcome in outcomes)
    ids = _ids(trained)
    assert len(ids) == len(set(ids)) and ids[-1] == "step-000015"
    run = RunDirectory.open(trained)
    assert run.rejected_checkpoints() == []
    for info in run.checkpoints():
        run.load_checkpoint_state(info.checkpoint_id)


_HOLD = """
import sys, time
from pathlib import Path
from napari_dgc.run_folder.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_another_process_is_refused_and_a_killed_holder_leaves_no_lock(cubes, trained, tmp_path):
    files = []
    for index, cube in enumerate(cubes):
        files.append(str(tmp_path / f"cube{index}.npy"))
        np.save(files[-1], cube)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(trained)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        info = RunDirectory.open(trained).holder()
        assert info is not None and info.pid == holder.pid and info.host == socket.gethostname()
        # The CLI of another process: one clear line naming the holder, nothing trained.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "napari_dgc.cli",
                "train",
                *files,
                "--resume",
                str(trained),
                "--steps",
                "9",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        assert f"is busy: trained by pid {holder.pid} on host" in result.stderr
        assert "Traceback" not in result.stderr and _ids(trained) == ["step-000003", "step-000006"]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # kill -9 released the lock at once: no stale lock blocks the run.
    assert RunDirectory.open(trained).holder() is None
    with RunLock(trained, "trained"):
        pass


def test_a_lock_file_record_of_a_dead_process_alone_does_not_block(trained):
    (trained / ".run.lock").write_text(
        json.dumps(
            {"pid": 2**22 + 12345, "host": socket.gethostname(), "since": "then", "purpose": "trained"}
        )
    )
    assert RunDirectory.open(trained).holder() is None
    lock = RunLock(trained)
    lock._flock = False  # as on a file system without flock: the record decides
    lock.acquire()
    lock.release()


def test_choose_while_training_and_save_without_the_lock_is_refused(cubes, trained):
    first = train(cubes, tiny_config(steps=9), trained, resume=True)
    next(first)
    viewer = RunDirectory.open(trained)
    viewer.choose("step-000003")  # a person may choose while the run trains
    torch.manual_seed(0)
    model = DGCModel(N_BANDS, viewer.config.model)
    with pytest.raises(CheckpointError, match="is busy"):
        viewer.save_checkpoint(50, model.state_dict(), {"state": {}, "param_groups": []}, {}, {})
    list(first)
    assert RunDirectory.open(trained).chosen_checkpoint == "step-000003"
    assert _ids(trained) == ["step-000003", "step-000006", "step-000009"]


# ---------------------------------------------------------------- 2. one bad entry costs only itself
def test_a_bad_entry_is_set_aside_and_the_other_checkpoints_stay_usable(trained):
    manifest = json.loads((trained / "run.json").read_text())
    good = manifest["checkpoints"][0]
    bad = [
        {**good, "id": "step--00040", "step": -40},
        {**good, "files": {}},  # checksums cannot be switched off by emptying them
        {**good, "id": "step-000003"},  # listed twice
        "not an entry",
    ]
    manifest["checkpoints"] += bad
    (trained / "run.json").write_text(json.dumps(manifest))
    run = RunDirectory.open(trained)
    assert [c.checkpoint_id for c in run.checkpoints()] == ["step-000003", "step-000006"]
    problems = run.rejected_checkpoints()
    assert len(problems) == 4 and "step--00040" in problems[0] and "no checksum" in problems[1]
    run.load_model("step-000003")
    run.choose("step-000006")  # updates keep the set-aside entries for a person to repair
    assert json.loads((trained / "run.json").read_text())["checkpoints"][2:] == bad


def test_an_empty_checksum_list_does_not_switch_the_check_off(trained):
    manifest = json.loads((trained / "run.json").read_text())
    manifest["checkpoints"][1]["files"] = {}
    (trained / "run.json").write_text(json.dumps(manifest))
    weights = trained / "checkpoints" / "step-000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    run = RunDirectory.open(trained)
    with pytest.raises(CheckpointError, match="no checkpoint 'step-000006'.*no checksum"):
        run.load_model("step-000006")


def test_negative_step_in_state_json_cannot_poison_the_run(cubes, trained):
    """The reported case: state.json step -50 (checksum updated) made resume list 'step--00040'."""
    state_file = trained / "checkpoints" / "step-000006" / "state.json"
    state = json.loads(state_file.read_text())
    state["step"] = state["training"]["step"] = -50
    state_file.write_text(json.dumps(state))
    manifest = json.loads((trained / "run.json").read_text())
    manifest["checkpoints"][1]["files"]["state.json"] = atomic.file_sha256(state_file)
    (trained / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="state.json: step -50"):
        list(train(cubes, tiny_config(steps=12), trained, resume=True))
    assert _ids(trained) == ["step-000003", "step-000006"]
    RunDirectory.open(trained).load_model("step-000003")


# ---------------------------------------------------------------- 4. writes stay inside
def test_checkpoints_through_a_link_leaving_the_run_are_refused(cubes, tmp_path):
    run = RunDirectory.create(tmp_path / "run", tiny_config(), N_BANDS, None, [], seed=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.path / "checkpoints").symlink_to(outside)
    torch.manual_seed(0)
    model = DGCModel(N_BANDS, run.config.model)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="checkpoints is a symbolic link to .*outside the run folder"):
        run.save_checkpoint(3, model.state_dict(), optimizer.state_dict(), {}, {})
    with pytest.raises(CheckpointError, match="symbolic link"):
        list(train(cubes, tiny_config(), run.path, resume=True))
    assert list(outside.iterdir()) == []


def test_a_listed_checkpoint_behind_a_link_is_not_read(trained, tmp_path):
    moved = tmp_path / "elsewhere"
    (trained / "checkpoints" / "step-000006").rename(moved)
    (trained / "checkpoints" / "step-000006").symlink_to(moved)
    with pytest.raises(CheckpointError, match="step-000006 is a symbolic link.*refusing to read"):
        RunDirectory.open(trained).load_model("step-000006")


def test_a_lock_file_link_is_refused_and_its_target_never_created(cubes, trained, tmp_path):
    target = tmp_path / "planted"
    (trained / ".run.lock").unlink(missing_ok=True)
    (trained / ".run.lock").symlink_to(target)
    with pytest.raises(CheckpointError, match=r"\.run\.lock: is a symbolic link"):
        list(train(cubes, tiny_config(steps=9), trained, resume=True))
    assert not target.exists()
    assert RunDirectory.open(trained).holder() is None


def test_temporaries_of_dead_writers_are_removed_when_the_run_is_opened_for_writing(cubes, trained):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    tag = atomic.host_tag()
    folder = trained / "checkpoints" / "step-000006"
    stale = [
        trained / f".run.json.{tag}-{dead_pid}-0123456789ab.dgctmp",
        folder / f".model.safetensors.{tag}-{dead_pid}-ba9876543210.dgctmp",
    ]
    alive = folder / f".state.json.{tag}-{os.getppid()}-aaaaaaaaaaaa.dgctmp"  # a live writer's
    foreign = trained / f".run.json.00000000-{dead_pid}-bbbbbbbbbbbb.dgctmp"  # another host's
    user_file = trained / "notes.tmp"
    for file in [*stale, alive, foreign, user_file]:
        file.write_bytes(b"partial")
    RunDirectory.open(trained)  # reading cleans nothing
    assert all(file.exists() for file in stale)
    list(train(cubes, tiny_config(steps=9), trained, resume=True))
    assert not any(file.exists() for file in stale)
    assert alive.exists() and foreign.exists() and user_file.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic.atomic_write_json(tmp_path / "out" / "result.json", {"a": 1})
        with atomic.atomic_open(tmp_path / "labels.npy") as handle:
            handle.write(b"x")
    finally:
        os.umask(previous)
    for file in (tmp_path / "out" / "result.json", tmp_path / "labels.npy"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX)] == []


# ---------------------------------------------------------------- 5. nothing left behind
def test_full_disk_at_run_creation_leaves_no_folder(tmp_path, monkeypatch):
    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("napari_dgc.run_folder.manifest.atomic_write_json", full)
    target = tmp_path / "a" / "run"
    with pytest.raises(CheckpointError, match="could not create the run folder: No space left on device"):
        RunDirectory.create(target, tiny_config(), N_BANDS, None, [], seed=3)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "options",
    [["--seed", "-1"], ["--lr", "nan"], ["--set", "optim.weight_decay=Infinity"]],
    ids=["seed", "lr", "weight_decay"],
)
def test_refused_settings_leave_no_run_folder(cubes, tmp_path, capsys, options):
    cube = tmp_path / "cube.npy"
    np.save(cube, cubes[0])
    argv = ["train", str(cube), "--out", str(tmp_path / "run"), "--steps", "3", "--quiet", *options]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("napari-dgc train: error: ") and "\n" not in error
    assert not (tmp_path / "run").exists()


def test_a_run_being_created_is_busy_for_others(tmp_path):
    """Creation holds the lock before it checks for run.json: two creators never both write."""
    results: list[str] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        barrier.wait()
        try:
            RunDirectory.create(tmp_path / "run", tiny_config(), N_BANDS, None, [], seed=3)
            results.append("created")
        except CheckpointError as error:
            results.append(
                "busy" if "busy" in str(error) else "exists" if "already" in str(error) else str(error)
            )

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("created") == 1 and set(results) <= {"created", "busy", "exists"}
