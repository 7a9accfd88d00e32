"""Batch segmentation of a study: many cubes, one at a time per worker, resumable, shardable.

The work is a sorted list of cubes (glob patterns expanded here, so quoted patterns work on every
shell and scheduler). A *shard* ``I/N`` takes every ``N``-th cube starting at ``I``
(:func:`shard_of`): torchrun ranks (``RANK``/``WORLD_SIZE``) or SLURM array tasks run the same
command and together do every cube exactly once, with no scheduler of ours. Inside one process,
``workers`` processes (spawned, each loading the model once) take cubes from a queue.

What a cube is turned into is the caller's :class:`CubeSegmenter` (the CLI's writes label and
class maps through ``analysis.export``, a layer above this one). This module owns the rest:
which cubes still need doing (:func:`plan`: outputs verified against the manifest's SHA-256 and
the model's fingerprint are kept), the worker pool, the manifest written atomically after every
cube (``batch_manifest``), and the progress line with its ETA over cubes and pixels.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from napari_dgc.atomic import file_sha256
from napari_dgc.errors import ConfigError, DGCError
from napari_dgc.inference.batch_manifest import area_table, input_signature, write_manifest

_GLOB_CHARACTERS = frozenset("*?[")


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Expand glob patterns (``**`` included) into a sorted list of cubes without repeats.

    A name without wildcards is kept as given (the reader reports it if it does not exist); a
    pattern that matches nothing is an error naming it, as a typo should not look like an empty
    study.
    """
    cubes: set[str] = set()
    for pattern in patterns:
        if _GLOB_CHARACTERS.isdisjoint(pattern):
            cubes.add(pattern)
            continue
        matches = glob.glob(pattern, recursive=True)
        if not matches:
            raise ConfigError(f"{pattern}: no file matches this pattern")
        cubes.update(matches)
    return sorted(cubes)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return index, count


def shard_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """The shard of a torchrun rank (``RANK``/``WORLD_SIZE``), or ``None`` outside torchrun."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    shard = parse_shard(f"{environ['RANK']}/{environ['WORLD_SIZE']}")
    return None if shard[1] == 1 else shard


def shard_of(cubes: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """Every ``N``-th cube from the ``I``-th: over ``I = 0..N-1`` each cube exactly once."""
    if shard is None:
        return list(cubes)
    index, count = shard
    return list(cubes[index::count])


@dataclass(frozen=True)
class CubeResult:
    """What a :class:`CubeSegmenter` reports for one cube (sent back from worker processes)."""

    rows: int
    cols: int
    outputs: dict[str, Path]
    cluster_pixels: list[int]
    class_pixels: list[int] | None = None


class CubeSegmenter(Protocol):
    """Turns one cube into output files; picklable, so spawned workers get a copy."""

    def prepare(self) -> None:
        """Load the model (once per process)."""

    def identity(self) -> dict[str, Any]:
        """Model fingerprint and output options: a cube done with another identity is redone."""

    def class_names(self) -> list[str] | None:
        """Names of class values ``0..C`` (0 = unassigned), or ``None`` without classes."""

    def planned_outputs(self, name: str) -> dict[str, Path]:
        """Output files of the cube named ``name`` (for the "exists" check before starting)."""

    def check(self, cube: str) -> tuple[int, int]:
        """Open the cube and check it fits the model; return its ``(rows, cols)``."""

    def segment(self, cube: str, name: str) -> CubeResult:
        """Segment the cube and write its outputs atomically."""


@dataclass
class Job:
    """A cube to segment: its argument, output name and pixel count (for the ETA)."""

    cube: str
    name: str
    pixels: int = 0


@dataclass
class BatchState:
    """Entries of the manifest being written and the counters of the progress line."""

    header: dict[str, Any]
    entries: dict[str, dict]
    out_dir: Path
    shard: tuple[int, int] | None
    total_cubes: int
    total_pixels: int
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    pixels_done: int = 0
    skipped_pixels: int = 0
    started: float = field(default_factory=time.perf_counter)

    def record(self, entry: dict) -> None:
        """Add a finished cube and write the manifest (atomically: a kill leaves a whole one)."""
        self.entries[entry["name"]] = entry
        self.finished += 1
        pixels = int(entry.get("pixels") or 0)
        self.pixels_done += pixels
        if entry["status"] == "failed":
            self.failed += 1
        elif entry["status"] == "skipped":
            self.skipped += 1
            self.skipped_pixels += pixels
        self.save()

    def save(self) -> None:
        """Write the manifest as it stands."""
        self.header["updated"] = _now()
        write_manifest(self.out_dir, self.shard, self.header, self.entries)

    def progress_line(self) -> str:
        """``cubes 5/20 (1 failed, 3 skipped) · pixels 40%  · 12 s · ETA 18 s``."""
        elapsed = time.perf_counter() - self.started
        counts = ((self.failed, "failed"), (self.skipped, "skipped"))
        extra = ", ".join(f"{count} {what}" for count, what in counts if count)
        share = self.pixels_done / self.total_pixels if self.total_pixels else 1.0
        # Skipped cubes cost nothing: the rate comes from the pixels segmented by this run.
        computed = self.pixels_done - self.skipped_pixels
        remaining = self.total_pixels - self.pixels_done
        eta = f"ETA {elapsed / computed * remaining:.0f} s" if computed > 0 and remaining > 0 else "ETA -"
        return (
            f"cubes {self.finished}/{self.total_cubes}{f' ({extra})' if extra else ''} · "
            f"pixels {self.pixels_done / 1e6:.2f}/{self.total_pixels / 1e6:.2f} M ({100 * share:.0f} %) · "
            f"{elapsed:.0f} s · {eta}"
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def cube_entry(
    segmenter: CubeSegmenter, job: Job, out_dir: Path, identity: Mapping[str, Any]
) -> dict[str, Any]:
    """Segment one cube and describe it for the manifest; errors become a ``failed`` entry."""
    started_at, started = _now(), time.perf_counter()
    entry: dict[str, Any] = {
        "name": job.name,
        "cube": job.cube,
        "status": "done",
        "started": started_at,
        "input": input_signature(job.cube),
        "identity": dict(identity),
        "worker": os.getpid(),
    }
    try:
        result = segmenter.segment(job.cube, job.name)
    except Exception as error:  # any failure of one cube is reported; run_jobs decides to stop
        message = str(error) if isinstance(error, (DGCError, OSError)) else f"{type(error).__name__}: {error}"
        entry.update(status="failed", error=message, seconds=round(time.perf_counter() - started, 3))
        entry["finished"] = _now()
        return entry
    names = segmenter.class_names()
    entry.update(
        rows=result.rows,
        cols=result.cols,
        pixels=result.rows * result.cols,
        outputs={
            role: {"file": path.name, "sha256": file_sha256(path)}
            for role, path in sorted(result.outputs.items())
        },
        cluster_areas=area_table(result.cluster_pixels),
        seconds=round(time.perf_counter() - started, 3),
        finished=_now(),
    )
    if result.class_pixels is not None and names is not None:
        entry["class_areas"] = area_table(result.class_pixels, names)
    return entry


def plan(
    segmenter: CubeSegmenter,
    cubes: Sequence[str],
    names: Sequence[str],
    out_dir: Path,
    previous: Mapping[str, dict],
    *,
    resume: bool,
    overwrite: bool,
    keep_going: bool,
) -> tuple[list[Job], list[dict]]:
    """Check every cube before the first is segmented; return ``(jobs, entries already known)``.

    With ``resume``, a cube whose recorded outputs verify (:func:`~.batch_manifest.is_reusable`)
    becomes a ``skipped`` entry and other outputs of it are replaced; without it, existing
    outputs are refused unless ``overwrite``. A cube that cannot be opened or does not fit the
    model raises, or with ``keep_going`` becomes a ``failed`` entry.
    """
    from napari_dgc.inference.batch_manifest import is_reusable

    identity = segmenter.identity()
    jobs: list[Job] = []
    known: list[dict] = []
    for cube, name in zip(cubes, names):
        entry = previous.get(name)
        if resume and is_reusable(entry, cube, out_dir, identity):
            known.append({**entry, "status": "skipped"})
            continue
        try:
            rows, cols = segmenter.check(cube)
        except (DGCError, OSError) as error:
            if not keep_going:
                raise
            known.append(
                {"name": name, "cube": cube, "status": "failed", "error": str(error), "finished": _now()}
            )
            continue
        if not (resume or overwrite):
            for target in segmenter.planned_outputs(name).values():
                if target.exists():
                    raise ConfigError(f"{target}: exists; pass --overwrite to replace it (or --resume)")
        jobs.append(Job(cube, name, rows * cols))
    return jobs, known


# ---------------------------------------------------------------- worker processes
_WORKER: CubeSegmenter | None = None


def _init_worker(segmenter: CubeSegmenter, threads: int) -> None:
    """Load the model once in a spawned worker (torch threads: its share of the cores)."""
    global _WORKER
    import torch

    torch.set_num_threads(max(1, threads))
    segmenter.prepare()
    _WORKER = segmenter


def _worker_entry(job: Job, out_dir: Path, identity: dict) -> dict[str, Any]:
    assert _WORKER is not None, "the worker was not initialised"
    if _WORKER.identity() != identity:
        # The run's latest checkpoint changed between the parent and this worker loading it.
        raise ConfigError("a worker loaded another model than the batch's; name the checkpoint")
    return cube_entry(_WORKER, job, out_dir, identity)


def run_jobs(
    segmenter: CubeSegmenter,
    jobs: Sequence[Job],
    state: BatchState,
    *,
    workers: int = 1,
    threads: int = 1,
    keep_going: bool = False,
    on_entry: Callable[[dict], None] | None = None,
) -> None:
    """Segment ``jobs`` (``workers`` processes at a time) and record each in ``state``.

    Without ``keep_going`` the first failed cube stops the batch: cubes in flight finish and are
    recorded, none is started, and a :class:`DGCError` carries the cube's error. Each job is
    submitted once, so no cube is done twice; a worker that dies takes its cube with it, and a
    rerun with ``--resume`` does it.
    """
    identity = segmenter.identity()
    failure: dict | None = None

    def finish(entry: dict) -> None:
        nonlocal failure
        state.record(entry)
        if on_entry is not None:
            on_entry(entry)
        if entry["status"] == "failed" and failure is None:
            failure = entry

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            finish(cube_entry(segmenter, job, state.out_dir, identity))
            if failure is not None and not keep_going:
                break
    else:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
        with ProcessPoolExecutor(
            min(workers, len(jobs)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(segmenter, threads),
        ) as pool:
            pending = {pool.submit(_worker_entry, job, state.out_dir, identity) for job in jobs}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        if future.cancelled():
                            continue
                        finish(future.result())
                    if failure is not None and not keep_going:
                        for future in pending:
                            future.cancel()
            finally:
                for future in pending:
                    future.cancel()
    if failure is not None and not keep_going:
        raise DGCError(failure["error"])


def default_threads(workers: int) -> int:
    """Torch threads per worker process: the usable cores shared out (at least one)."""
    from napari_dgc.inference.segmentation import usable_cores

    return max(1, usable_cores() // max(1, workers))


def print_progress(state: BatchState, stream: Any = None) -> None:
    """Write the progress line: in place on a terminal, one line per cube in a log."""
    stream = sys.stderr if stream is None else stream
    line = state.progress_line()
    if getattr(stream, "isatty", lambda: False)():
        end = "\n" if state.finished == state.total_cubes else ""
        stream.write(f"\r\x1b[K{line}{end}")
    else:
        stream.write(line + "\n")
    stream.flush()
