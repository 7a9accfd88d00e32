"""Data-parallel training over two gloo processes (:mod:`napari_dgc.training.distributed`).

Each test starts real processes: this file run as a script is the worker of the trainer-level
test (``python tests/test_distributed_training.py worker OUT``); the others run the CLI as
torchrun does (``python -m napari_dgc train`` with ``RANK``/``WORLD_SIZE``/``MASTER_*`` in the
environment) or through ``torchrun`` itself. Everything is tiny and single-threaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
#: Settings every worker and reference trainer shares: tiny crops, 4 pairs (2 per rank).
BASE = {
    "model.n_clusters": 3,
    "data.crop_size": 16,
    "data.batch_size": 4,
    "device": "cpu",
    "seed": 5,
    "steps": STEPS,
}
#: ``stress`` exercises every statistic the ranks share: all loss terms and the spectral start
#: on the whole first batch.
#: ``decomposable`` keeps only the terms that are means over pixels (compactness, orthogonality,
#: anchor), so two processes must give the one-process result up to rounding.
CONFIGS = {
    "stress": {},
    "decomposable": {"losses.weight_consistency": 0.0},
}
CLI_TRAIN = [
    "--clusters",
    "3",
    "--crop-size",
    "16",
    "--batch-size",
    "2",
    "--starts",
    "1",
    "--threads",
    "1",
    "--quiet",
]


def _config(name: str):
    from napari_dgc.config import TrainConfig

    return TrainConfig().with_settings({**BASE, **CONFIGS[name]})


def _trainer(cube: np.ndarray, name: str, group):
    from napari_dgc.model.device import resolve_device
    from napari_dgc.training.loop import _new_trainer
    from napari_dgc.training.normalization import compute_band_statistics
    from napari_dgc.training.sampling import open_sources

    config = _config(name)
    sources = open_sources([cube])
    statistics = compute_band_statistics(sources, True, config.data.normalization_pixels)
    trainer = _new_trainer(sources, config, resolve_device("cpu"), 0, group)
    trainer.model.set_normalization(statistics.offset, statistics.scale, statistics.brightness_floor)
    return trainer


def _digest(trainer) -> str:
    """Everything a rank holds that must be the same on all ranks, hashed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    digest.update(trainer.anchor_centroids.cpu().numpy().tobytes())
    state = {key: value for key, value in trainer.training_state().items() if key != "tensors"}
    digest.update(json.dumps(state, sort_keys=True).encode())
    return digest.hexdigest()


def _worker(out: Path) -> None:
    """One rank of the trainer-level test: the digest after every step, the final weights."""
    import torch
    from safetensors.numpy import save_file

    from napari_dgc.training import distributed

    torch.set_num_threads(1)
    group = distributed.process_group(torch.device("cpu"), 30.0)
    cube = np.load(out / "cube.npy")
    record = {}
    for name in CONFIGS:
        trainer = _trainer(cube, name, group)
        record[name] = []
        for _ in range(STEPS):
            trainer.step()
            record[name].append(_digest(trainer))
        weights = {key: value.numpy() for key, value in trainer.model.state_dict().items()}
        save_file(
            {**weights, "anchor_centroids": trainer.anchor_centroids.numpy()},
            out / f"{name}-{group.rank}.safetensors",
        )
    (out / f"digests-{group.rank}.json").write_text(json.dumps(record))
    distributed.leave()
    (out / f"threads-{group.rank}.json").write_text(json.dumps(_native_thread_names()))


def _native_thread_names() -> list[str]:
    """The names of this process's threads, native ones included (Linux's /proc)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_env(rank: int, port: int, **extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **extra,
    )
    return env


def _start_ranks(arguments: list[str], **extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, *arguments],
            env=_rank_env(rank, port, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


def _finish(processes: list[subprocess.Popen], timeout: float = 60) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append((process.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def cube_file(tmp_path_factory) -> Path:
    from napari_dgc.datasets.synthetic import make_leaf_scene

    folder = tmp_path_factory.mktemp("ddp")
    np.save(folder / "cube.npy", make_leaf_scene(40, 40, 12, seed=3).cube)
    return folder / "cube.npy"


def test_ranks_stay_identical_and_match_one_process(cube_file, tmp_path):
    from safetensors.numpy import load_file

    from napari_dgc.training.distributed import SINGLE_PROCESS

    shutil.copy(cube_file, tmp_path / "cube.npy")
    results = _finish(_start_ranks([__file__, "worker", str(tmp_path)]))
    assert all(code == 0 for code, _, _ in results), results
    digests = [json.loads((tmp_path / f"digests-{rank}.json").read_text()) for rank in range(2)]
    for name in CONFIGS:  # weights, centroids, anchor, generators and sampler after every step
        assert digests[0][name] == digests[1][name], name
        assert len(set(digests[0][name])) == STEPS, f"{name}: the training did not move"
    # A group left alive runs gloo's threads into the interpreter's exit, where one of them can
    # abort the finished process (it did in about one run of twenty).
    for rank in range(2):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert not [name for name in threads if "gloo" in name], (rank, threads)

    # Same global batch in one process: equal up to the order of the float sums.
    reference = _trainer(np.load(cube_file), "decomposable", SINGLE_PROCESS)
    for _ in range(STEPS):
        reference.step()
    shared = load_file(tmp_path / "decomposable-0.safetensors")
    np.testing.assert_array_equal(shared.pop("anchor_centroids"), reference.anchor_centroids.numpy())
    for key, value in reference.model.state_dict().items():
        np.testing.assert_allclose(shared[key], value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_dead_rank_stops_the_other_and_the_run_resumes(cube_file, tmp_path, capsys):
    from napari_dgc.cli import main
    from napari_dgc.run_folder import RunDirectory

    run, steps = tmp_path / "run", ["--steps", "12", "--checkpoint-every", "4"]
    command = ["-m", "napari_dgc", "train", str(cube_file), "--out", str(run), *steps, *CLI_TRAIN]
    ranks = _start_ranks([*command, "--dist-timeout", "10"])
    deadline = time.monotonic() + 60
    while not (run / "checkpoints" / "step-000004" / "state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
        assert ranks[0].poll() is None, ranks[0].communicate()
    ranks[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code, _, stderr = _finish(ranks[:1])[0]
    ranks[1].wait()
    assert code == 2 and time.monotonic() - killed < 15, stderr
    assert "rank 0 of 2" in stderr and "another rank stopped or did not answer" in stderr, stderr
    folder = RunDirectory.open(run)
    assert 4 <= folder.latest_checkpoint().step < 12
    folder.load_model()  # what rank 0 wrote is complete

    # torchrun --max-restarts reruns the same command with TORCHELASTIC_RESTART_COUNT > 0: it resumes.
    results = _finish(_start_ranks(command, TORCHELASTIC_RESTART_COUNT="1"))
    assert [code for code, _, _ in results] == [0, 0], results
    assert f"finished at step 12: {run}\n" in results[0][1] and results[1][1] == "", results

    # The same run from torchrun itself, uninterrupted: bit-identical checkpoints.
    whole = tmp_path / "whole"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port"]
    torchrun += [str(_free_port()), "-m", "napari_dgc", "train", str(cube_file), "--out", str(whole)]
    finished = subprocess.run(
        [*torchrun, *steps, *CLI_TRAIN],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert finished.returncode == 0, finished.stderr
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_runs import compare

    compare(run, whole)
    state = json.loads((whole / "checkpoints" / "step-000012" / "state.json").read_text())
    assert state["training"]["world_size"] == 2

    # One process continues a two-process run, and says that it is not bit-exact.
    assert main(["train", "--resume", str(whole), "--steps", "14", "--quiet"]) == 0
    warning = capsys.readouterr().err
    assert (
        "napari-dgc train: warning:" in warning and "trained by 2 process(es) and continues on 1" in warning
    )
    assert "not bit-exactly" in warning


def test_uneven_batch_is_refused_before_anything_is_written(cube_file, tmp_path, monkeypatch):
    from napari_dgc.errors import ConfigError
    from napari_dgc.training import loop
    from napari_dgc.training.distributed import ProcessGroup

    monkeypatch.setattr(loop, "process_group", lambda device: ProcessGroup(rank=0, world_size=2))
    config = _config("stress").with_settings({"data.batch_size": 3})
    with pytest.raises(ConfigError, match="batch of 3 crop pairs cannot be split evenly over 2 processes"):
        next(loop.train([np.load(cube_file)], config, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_documented_torchrun_lines_parse():
    """README.md and docs/scaling.md show torchrun lines; what follows ``-m napari_dgc`` must be
    a valid ``napari-dgc`` command (the tests above run the same command for real)."""
    from napari_dgc.cli import parse_args

    lines = [
        line.strip()
        for document in (ROOT / "README.md", ROOT / "docs" / "scaling.md")
        for line in document.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("torchrun ") and " -m napari_dgc " in line
    ]
    assert len(lines) >= 2, lines
    for line in lines:
        arguments = line.split(" -m napari_dgc ", 1)[1].split("#")[0].split()
        assert parse_args(arguments).command == "train", line


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(Path(sys.argv[2]))
