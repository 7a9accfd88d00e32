"""Batch segmentation of a study (issue 14 item 2): workers, shards, resume after kill -9, manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.analysis.export import export_model_folder
from napari_dgc.cli import main
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.inference.batch import expand_inputs, shard_from_environment, shard_of
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import RunDirectory

N_BANDS, K, N_CUBES = 10, 3, 20
CLI = [sys.executable, "-c", "import sys; from napari_dgc.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[RunDirectory, Path]:
    root = tmp_path_factory.mktemp("study")
    config = TrainConfig(model=ModelConfig(n_clusters=K, embed_dim=8, meanshift_iters=1))
    run = RunDirectory.create(root / "run", config, N_BANDS, None, [], seed=0)
    torch.manual_seed(0)
    model = DGCModel(N_BANDS, config.model)
    run.save_checkpoint(10, model.state_dict(), torch.optim.AdamW(model.parameters()).state_dict(), {}, {})
    cubes = root / "cubes"
    cubes.mkdir()
    rng = np.random.default_rng(0)
    for index in range(N_CUBES):
        np.save(cubes / f"leaf{index:02d}.npy", rng.random((16, 16, N_BANDS), dtype=np.float32))
    return run, cubes


def manifest(out: Path, name: str = "segment-manifest.json") -> dict[str, dict]:
    return {entry["name"]: entry for entry in json.loads((out / name).read_text())["cubes"]}


def segment(run: RunDirectory, pattern: str, out: Path, *options: str) -> int:
    return main(["segment", str(run.path), pattern, "--out", str(out), "--format", "npy", *options])


def test_workers_corrupt_cube_and_equal_to_one_process(study, tmp_path, capsys):
    run, cubes = study
    folder = tmp_path / "with-bad"
    folder.mkdir()
    for cube in cubes.iterdir():
        (folder / cube.name).symlink_to(cube)
    (folder / "leaf99.npy").write_bytes(b"\x93NUMPY garbage")  # unreadable cube
    out2, out1 = tmp_path / "two", tmp_path / "one"
    assert segment(run, str(folder / "*.npy"), out2, "--workers", "2", "--keep-going") == 1
    err = capsys.readouterr().err
    assert "leaf99.npy" in err and "1 of 21 cubes failed" in err and "ETA" in err
    entries = manifest(out2)
    assert len(entries) == N_CUBES + 1 and entries["leaf99"]["status"] == "failed"
    done = [e for e in entries.values() if e["status"] == "done"]
    assert len(done) == N_CUBES and len({e["worker"] for e in done}) == 2  # both workers worked
    assert segment(run, str(cubes / "*.npy"), out1, "--quiet") == 0
    for index in range(N_CUBES):
        name = f"leaf{index:02d}_labels.npy"
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
        entry = entries[f"leaf{index:02d}"]
        assert (
            entry["outputs"]["labels"]["sha256"]
            == manifest(out1)[f"leaf{index:02d}"]["outputs"]["labels"]["sha256"]
        )
        assert sum(area["pixels"] for area in entry["cluster_areas"]) == entry["pixels"] == 256
    csv = (out2 / "segment-manifest.csv").read_text().splitlines()
    assert len(csv) == N_CUBES + 2 and csv[0].startswith("name,cube,status")
    # A pattern matching nothing is an error naming it.
    assert segment(run, str(tmp_path / "none*.hdr"), tmp_path / "x") == 2
    assert "none*.hdr: no file matches" in capsys.readouterr().err


def test_shards_cover_every_cube_once_and_merge(study, tmp_path, monkeypatch):
    run, cubes = study
    out = tmp_path / "out"
    all_cubes = expand_inputs([str(cubes / "*.npy")])
    parts = [shard_of(all_cubes, (index, 2)) for index in range(2)]
    assert sorted(parts[0] + parts[1]) == all_cubes and not set(parts[0]) & set(parts[1])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shard_from_environment() == (1, 2)
    assert segment(run, str(cubes / "*.npy"), out, "--quiet") == 0  # rank 1 under torchrun
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert segment(run, str(cubes / "*.npy"), out, "--shard", "0/2", "--quiet") == 0
    first, second = (
        manifest(out, "segment-manifest.shard-0-of-2.json"),
        manifest(out, "segment-manifest.shard-1-of-2.json"),
    )
    assert len(first) + len(second) == N_CUBES and not first.keys() & second.keys()
    # The merge step: a rerun without shards keeps every verified cube and writes the whole manifest.
    assert segment(run, str(cubes / "*.npy"), out, "--resume", "--quiet") == 0
    merged = manifest(out)
    assert len(merged) == N_CUBES and {e["status"] for e in merged.values()} == {"skipped"}


def test_rerun_after_kill_does_only_the_missing_cubes(study, tmp_path):
    run, cubes = study
    folder = tmp_path / "cubes"
    folder.mkdir()
    for cube in sorted(cubes.iterdir())[:8]:
        (folder / cube.name).symlink_to(cube)
    rng = np.random.default_rng(1)
    for name in ("slow1", "slow2"):  # sorted last; slow with one-pixel tiles, so the kill lands mid-run
        np.save(folder / f"{name}.npy", rng.random((40, 40, N_BANDS), dtype=np.float32))
    out = tmp_path / "out"
    argv = ["segment", str(run.path), str(folder / "*.npy"), "--out", str(out), "--format", "npy"]
    argv += ["--tile", "1", "--threads", "1", "--quiet"]
    process = subprocess.Popen([*CLI, *argv], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    before: dict[str, dict] = {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            before = manifest(out)
        except (OSError, ValueError):  # not written yet (never half-written: atomic)
            before = {}
        if len(before) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    before = manifest(out)  # whole and readable after kill -9
    assert 3 <= len(before) < 10
    completed = subprocess.run([*CLI, *argv, "--resume"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    after = manifest(out)
    assert len(after) == 10
    for name, entry in after.items():
        if name in before:  # kept: same timestamps, verified outputs
            assert entry["status"] == "skipped" and entry["finished"] == before[name]["finished"]
        else:
            assert entry["status"] == "done" and entry["started"] > max(
                e["finished"] for e in before.values()
            )


def test_classes_write_the_class_area_table(study, tmp_path):
    run, cubes = study
    mapping = ClassMapping(
        [SemanticClass("tissue", "#00ff00", [0, 1]), SemanticClass("lesion", "#ff0000", [2])], n_clusters=K
    )
    model = export_model_folder(run, tmp_path / "model", mapping)
    out = tmp_path / "out"
    pattern = str(cubes / "leaf0*.npy")
    assert main(["segment", "--classes", str(model), pattern, "--out", str(out), "--quiet"]) == 0
    lines = (out / "class-areas.csv").read_text().splitlines()
    assert (
        lines[0] == "name,cube,status,pixels,unassigned pixels,unassigned %,"
        "tissue pixels,tissue %,lesion pixels,lesion %"
    )
    assert len(lines) == 11
    for entry in manifest(out).values():
        areas = {area["name"]: area for area in entry["class_areas"]}
        assert areas["tissue"]["pixels"] + areas["lesion"]["pixels"] == 256
        assert abs(areas["tissue"]["percent"] + areas["lesion"]["percent"] - 100) < 1e-3
