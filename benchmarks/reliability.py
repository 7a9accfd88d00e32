"""Reliability harness: kill training at random moments, fill the disk, race two writers.

Each trial trains a tiny run with a checkpoint after every step and two starts, through the
real CLI in a child process, and checks what a person relies on afterwards::

    python benchmarks/reliability.py --kills 30 --concurrent 20          # the figures in the docs
    python benchmarks/reliability.py --kills 5 --concurrent 2 --no-disk  # what CI runs (tests/)

* **kill -9** at a random moment (from just before the run folder exists to the end, so
  inside every kind of write: run creation, tensor files, state.json, run.json): every listed
  checkpoint must load (`load_model` and `load_checkpoint_state`), `segment` must work on the
  latest one, `--resume` must finish, and every checkpoint of the finished run must equal,
  bit for bit, those of an uninterrupted run with the same seed;
* **full disk** (a small tmpfs, root only): training stops with a one-line error, the run
  folder stays loadable, and after space is freed `--resume` finishes with the same weights;
* **concurrent writers**: two `--resume` of one run at once: one trains, the other is refused
  ("busy"), and the run ends uncorrupted and equal to the uninterrupted one.

It prints the counts and exits non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare_runs import compare  # noqa: E402

from napari_dgc.datasets.synthetic import make_leaf_scene  # noqa: E402
from napari_dgc.run_folder import RunDirectory  # noqa: E402

#: A run of two starts (4 steps each) continued to 10 steps, a checkpoint after every step.
TRAIN_SETTINGS = [
    "--clusters", "3", "--steps", "10", "--checkpoint-every", "1", "--starts", "2",
    "--set", "starts.steps=4", "--crop-size", "16", "--batch-size", "1", "--seed", "7",
    "--device", "cpu", "--threads", "1", "--quiet",
]  # fmt: skip


@dataclass
class Counts:
    """What the harness found; every count but ``trials`` must stay 0."""

    trials: int = 0
    killed_before_run_folder: int = 0
    unloadable_checkpoints: int = 0
    failed_segments: int = 0
    failed_resumes: int = 0
    weight_mismatches: int = 0
    corrupt_runs: int = 0
    unclear_errors: int = 0
    problems: list[str] = field(default_factory=list)

    def failed(self) -> bool:
        """Whether any check failed."""
        return bool(self.problems)


def napari_dgc(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a child process (as a user would), capturing its output."""
    command = [sys.executable, "-m", "napari_dgc.cli", *arguments]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def start_training(arguments: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``napari-dgc train ARGUMENTS`` without waiting."""
    command = [sys.executable, "-m", "napari_dgc.cli", "train", *arguments]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def check_listed_checkpoints(run_dir: Path, counts: Counts, label: str) -> list[str]:
    """Load every listed checkpoint; return their ids."""
    run = RunDirectory.open(run_dir)
    ids = [info.checkpoint_id for info in run.checkpoints()]
    for checkpoint_id in ids:
        try:
            run.load_model(checkpoint_id)
            run.load_checkpoint_state(checkpoint_id)
        except Exception as error:
            counts.unloadable_checkpoints += 1
            counts.problems.append(f"{label}: {checkpoint_id} does not load: {error}")
    return ids


def check_finished_run(run_dir: Path, reference: Path, counts: Counts, label: str) -> None:
    """The finished run must equal the uninterrupted one, checkpoint by checkpoint."""
    try:
        compare(reference, run_dir)
    except AssertionError as error:
        counts.weight_mismatches += 1
        counts.problems.append(f"{label}: differs from the uninterrupted run: {error}")


def kill_trial(
    index: int,
    work: Path,
    cube: Path,
    reference: Path,
    window: tuple[float, float],
    counts: Counts,
    rng: random.Random,
) -> None:
    """One kill -9 at a random moment, then load, segment, resume and compare."""
    label = f"kill {index}"
    run_dir = work / f"run-{index}"
    process = start_training([str(cube), "--out", str(run_dir), *TRAIN_SETTINGS], work)
    time.sleep(rng.uniform(*window))
    process.send_signal(signal.SIGKILL)
    process.wait()
    counts.trials += 1
    if not (run_dir / "run.json").exists():
        # Killed while Python started or before the manifest was complete: a new run in the
        # same folder must still be possible (nothing half-made blocks it).
        counts.killed_before_run_folder += 1
        result = napari_dgc("train", str(cube), "--out", str(run_dir), *TRAIN_SETTINGS, cwd=work)
        if result.returncode != 0:
            counts.failed_resumes += 1
            counts.problems.append(f"{label}: a new run in the folder failed: {result.stderr.strip()}")
            return
    else:
        ids = check_listed_checkpoints(run_dir, counts, label)
        if ids:
            result = napari_dgc(
                "segment", str(run_dir), str(cube), "--out", str(work / f"seg-{index}"), cwd=work
            )
            if result.returncode != 0:
                counts.failed_segments += 1
                counts.problems.append(f"{label}: segment failed: {result.stderr.strip()}")
        result = napari_dgc("train", "--resume", str(run_dir), "--threads", "1", "--quiet", cwd=work)
        if result.returncode != 0:
            counts.failed_resumes += 1
            counts.problems.append(f"{label}: resume failed: {result.stderr.strip()}")
            return
    check_listed_checkpoints(run_dir, counts, label)
    check_finished_run(run_dir, reference, counts, label)


def concurrent_trial(index: int, work: Path, cube: Path, reference: Path, counts: Counts) -> None:
    """Two resumes of one run at once: one trains, the other is refused; the run stays whole."""
    label = f"concurrent {index}"
    run_dir = work / f"race-{index}"
    partial = [*TRAIN_SETTINGS]
    partial[partial.index("--steps") + 1] = "5"
    result = napari_dgc("train", str(cube), "--out", str(run_dir), *partial, cwd=work)
    if result.returncode != 0:
        counts.problems.append(f"{label}: the first part of the run failed: {result.stderr.strip()}")
        return
    counts.trials += 1
    resume = ["--resume", str(run_dir), "--steps", "10", "--threads", "1", "--quiet"]
    first, second = start_training(resume, work), start_training(resume, work)
    outcomes = [(process.wait(), process.stderr.read()) for process in (first, second)]
    codes = sorted(code for code, _ in outcomes)
    refused = [text for code, text in outcomes if code != 0]
    if codes not in ([0, 0], [0, 2]) or any("busy" not in text for text in refused):
        counts.unclear_errors += 1
        counts.problems.append(f"{label}: exit codes {codes}: {refused}")
    try:
        manifest = RunDirectory.open(run_dir)
        ids = [info.checkpoint_id for info in manifest.checkpoints()]
        if len(ids) != len(set(ids)):
            raise AssertionError(f"duplicate entries {ids}")
    except Exception as error:
        counts.corrupt_runs += 1
        counts.problems.append(f"{label}: run corrupt: {error}")
        return
    check_listed_checkpoints(run_dir, counts, label)
    check_finished_run(run_dir, reference, counts, label)


def full_disk_trial(work: Path, cube: Path, reference: Path, counts: Counts) -> str:
    """Train on a tmpfs too small for the run, then grow it and resume; say what happened."""
    mount = work / "small-disk"
    mount.mkdir()
    one_checkpoint = sum(f.stat().st_size for f in (reference / "checkpoints" / "step-000001").iterdir())
    size = 6 * one_checkpoint + 64 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode != 0:
        return "skipped (mounting a tmpfs needs root)"
    try:
        counts.trials += 1
        run_dir = mount / "run"
        result = napari_dgc("train", str(cube), "--out", str(run_dir), *TRAIN_SETTINGS, cwd=work)
        error_lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or len(error_lines) != 1 or "space" not in error_lines[0].lower():
            counts.unclear_errors += 1
            counts.problems.append(f"full disk: exit {result.returncode}, stderr {result.stderr.strip()!r}")
        if (run_dir / "run.json").exists():
            check_listed_checkpoints(run_dir, counts, "full disk")
        subprocess.run(["mount", "-o", f"remount,size={64 * size}", str(mount)], check=True)
        if (run_dir / "run.json").exists():
            result = napari_dgc("train", "--resume", str(run_dir), "--threads", "1", "--quiet", cwd=work)
        else:
            result = napari_dgc("train", str(cube), "--out", str(run_dir), *TRAIN_SETTINGS, cwd=work)
        if result.returncode != 0:
            counts.failed_resumes += 1
            counts.problems.append(f"full disk: resume after freeing space failed: {result.stderr.strip()}")
        else:
            check_listed_checkpoints(run_dir, counts, "full disk")
            check_finished_run(run_dir, reference, counts, "full disk")
        return error_lines[0] if error_lines else "(no message)"
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def run_harness(kills: int, concurrent: int, disk: bool, seed: int = 0, work: Path | None = None) -> Counts:
    """Run every trial in ``work`` (a new temporary folder by default); return the counts."""
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="dgc-reliability-")) if work is None else work
    try:
        cube = work / "leaf.npy"
        np.save(cube, make_leaf_scene(32, 32, 16, seed=seed).cube)
        reference = work / "reference"
        started = time.monotonic()
        process = start_training([str(cube), "--out", str(reference), *TRAIN_SETTINGS], work)
        while process.poll() is None and not (reference / "run.json").exists():
            time.sleep(0.01)
        created = time.monotonic() - started
        if process.wait() != 0:
            raise RuntimeError(f"the uninterrupted run failed: {process.stderr.read()}")
        duration = time.monotonic() - started
        counts = Counts()
        rng = random.Random(seed)
        # From a little before the run folder exists to a little after the run would end.
        window = (0.8 * created, 1.05 * duration)
        for index in range(kills):
            kill_trial(index, work, cube, reference, window, counts, rng)
        for index in range(concurrent):
            concurrent_trial(index, work, cube, reference, counts)
        disk_note = full_disk_trial(work, cube, reference, counts) if disk else "not run"
        print(
            f"uninterrupted run: {duration:.1f} s (run folder after {created:.1f} s); full disk: {disk_note}"
        )
        return counts
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """Run the harness with the command line's counts; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="kill -9 trials (default 30)")
    parser.add_argument("--concurrent", type=int, default=20, help="two-writer trials (default 20)")
    parser.add_argument("--no-disk", action="store_true", help="skip the full-disk trial")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and the cube")
    args = parser.parse_args()
    counts = run_harness(args.kills, args.concurrent, not args.no_disk, args.seed)
    print("| check | count |\n|---|---|")
    for name in ("trials", "killed_before_run_folder", "unloadable_checkpoints", "failed_segments",
                 "failed_resumes", "weight_mismatches", "corrupt_runs", "unclear_errors"):  # fmt: skip
        print(f"| {name.replace('_', ' ')} | {getattr(counts, name)} |")
    for problem in counts.problems:
        print("PROBLEM:", problem)
    return 1 if counts.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
