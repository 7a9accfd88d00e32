"""Training as a generator of typed events, shared by the CLI and the napari widget.

``for event in train(cubes, config, run_dir): ...`` yields one
:class:`~napari_dgc.training.events.ProgressEvent` per optimiser step, a ``CheckpointEvent``
after each checkpoint is fully written, a ``StartSelectedEvent`` when several starts have been
scored, and a ``FinishedEvent`` at the end. Pausing is not pulling the next event; stopping is
closing the generator (the run folder then lists only complete checkpoints); ``resume=True``
continues from the latest checkpoint and ends with exactly the weights of an uninterrupted run.
The optimiser step itself is :class:`~napari_dgc.training.trainer.Trainer`'s.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_dgc.config import RESUMABLE_SETTINGS, StartPlan, TrainConfig, differing_settings
from napari_dgc.errors import CheckpointError, ConfigError
from napari_dgc.io.preparation import Preparation
from napari_dgc.metrics import calinski_harabasz, normalized_mutual_info, usage_entropy
from napari_dgc.model.device import resolve_device
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.manifest import OPTIMIZER_FILE, STATE_FILE
from napari_dgc.run_folder.preparation_file import run_preparation, save_references
from napari_dgc.training.distributed import ProcessGroup, WorldSizeWarning, process_group
from napari_dgc.training.events import (
    LOSS_TERMS,
    CheckpointEvent,
    FinishedEvent,
    ProgressEvent,
    StartSelectedEvent,
)
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.recommendation import recommend
from napari_dgc.training.sampling import PairStream, batch_share, check_crop_fits, open_sources
from napari_dgc.training.starts import (
    recorded_selection_score,
    selected_start,
    selection_windows,
    window_predictions,
)
from napari_dgc.training.trainer import StepResult, Trainer

TrainEvent = ProgressEvent | CheckpointEvent | StartSelectedEvent | FinishedEvent

#: Read the next batch's windows in a background thread while a step computes
#: (:class:`~napari_dgc.training.sampling.PairStream` ``read_ahead``): the same pairs, the same
#: checkpoints. A switch for tests and benchmarks, not a setting.
READ_AHEAD = True


@dataclass
class _Checkpoint:
    """What one checkpoint stores (the live tensors: write them before the next step)."""

    step: int
    model_state: dict
    optimizer_state: dict
    training_state: dict
    stats: dict


def train(
    cubes: Sequence,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
) -> Iterator[TrainEvent]:
    """Train a DGC model, yielding events; checkpoints go to ``run_dir``.

    Parameters
    ----------
    cubes : sequence of path, Cube or numpy.ndarray
        The dataset: cube files (opened with :func:`napari_dgc.io.open_cube`), opened cubes or
        band-last ``(rows, cols, bands)`` arrays, all with the same band count. Only the windows
        the crop pairs need are read, one cube at a time.
    config : TrainConfig
        Settings. When resuming they must equal the run's own except for
        :data:`~napari_dgc.config.RESUMABLE_SETTINGS` (build them with
        :func:`~napari_dgc.config.resumed_config`): more ``steps`` extend a finished run.
    run_dir : path-like
        New run folder, or the run to resume.
    resume : bool
        Continue the run in ``run_dir`` from its latest checkpoint.

    Yields
    ------
    ProgressEvent, CheckpointEvent, StartSelectedEvent or FinishedEvent

    Raises
    ------
    DGCError
        Bad input (cubes of different band counts, a cube smaller than the crop, NaN / Inf
        pixels, invalid settings, a run folder of another band count or model, settings a
        resume may not change); raised before anything is written when detectable up front.
    """
    config.validate()
    # Under torchrun every process runs this generator; rank 0 alone writes the run folder,
    # the others read it (a file system every rank sees, as the cubes must be).
    group = process_group(resolve_device(config.device))
    batch_share(config.data.batch_size, group.rank, group.world_size)  # an uneven split fails here
    # A resumed run is locked before anything in it is looked at, a new one by its creation,
    # and stays locked until the generator ends or is closed: two trainings never interleave.
    run = RunDirectory.open(run_dir, lock=group.is_writer) if resume else None
    try:
        # A new run reads its reference files (bad ones fail here, before anything is written);
        # a resumed run uses the references it stored.
        preparation = run_preparation(run) if resume else Preparation.from_settings(config.prep)
        sources = open_sources(cubes, preparation)
        n_bands = sources[0].n_bands
        if resume:
            run.ensure_compatible(config, n_bands)
            _check_resumable(run, config)
        check_crop_fits(sources, config.data.crop_size)
        written = run.checkpoints() if resume else []
        if written:
            normalization, elapsed, trained_by = _resumed_normalization(run, written[-1].checkpoint_id)
            if trained_by != group.world_size and group.is_writer:
                warnings.warn(
                    f"{run.path}: the run was trained by {trained_by} process(es) and continues on "
                    f"{group.world_size}: it resumes, but not bit-exactly (the batch-level loss terms "
                    "are formed on each process's share; docs/scaling.md)",
                    WorldSizeWarning,
                    stacklevel=2,
                )
        elif group.world_size > 1 and not group.is_writer:
            normalization, elapsed = (np.zeros(n_bands), np.ones(n_bands), 0.0), 0.0  # rank 0's come
        else:
            statistics = compute_band_statistics(
                sources, config.model.brightness_norm, config.data.normalization_pixels
            )
            normalization = (statistics.offset, statistics.scale, statistics.brightness_floor)
            elapsed = 0.0
        if not resume and group.is_writer:
            names, wavelengths, open_options = _describe_sources(cubes, sources)
            run = RunDirectory.create(
                run_dir,
                config,
                n_bands,
                wavelengths,
                names,
                config.seed,
                lock=True,
                open_options=open_options,
            )
            save_references(run.path, preparation)
        if group.world_size > 1:
            normalization, elapsed = _shared_normalization(group, normalization, elapsed)
            if not resume and not group.is_writer:  # rank 0 created the run folder meanwhile
                run = RunDirectory.open(run_dir)
        yield from _RunTraining(run, sources, config, normalization, elapsed, group).events()
    finally:
        if run is not None:
            run.release()


def _check_resumable(run: RunDirectory, config: TrainConfig) -> None:
    """Refuse settings that differ from the run's beyond what a resume may change."""
    refused = [key for key in differing_settings(run.config, config) if key not in RESUMABLE_SETTINGS]
    if refused:
        raise ConfigError(
            f"{run.manifest_path}: a resumed run keeps its own settings; these differ: {', '.join(refused)}"
        )


def _resumed_normalization(run: RunDirectory, last_written: str) -> tuple[tuple, float, int]:
    """The dataset normalisation, training time and number of processes of a run being resumed.

    The statistics are in every checkpoint (fresh starts of a resumed run need them); training
    time counts all starts, so it comes from the last checkpoint written, as does the number of
    processes that trained it (``world_size``, recorded when more than one).
    """
    weights, _, state = run.load_checkpoint_state(last_written)
    normalization = (weights["band_offset"], weights["band_scale"], float(weights["brightness_floor"]))
    elapsed = state.get("elapsed_s", 0.0) if isinstance(state, dict) else None
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not 0 <= elapsed < float("inf"):
        raise CheckpointError(
            f"{run.checkpoint_dir(last_written) / STATE_FILE}: training time {elapsed!r} is invalid"
        )
    world_size = state.get("world_size", 1)
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise CheckpointError(
            f"{run.checkpoint_dir(last_written) / STATE_FILE}: world_size {world_size!r} is invalid"
        )
    return normalization, float(elapsed), world_size


def _shared_normalization(group: ProcessGroup, normalization: tuple, elapsed: float) -> tuple[tuple, float]:
    """Rank 0's dataset normalisation and training time, on every rank (computed once)."""
    offset, scale, floor = (np.asarray(value, dtype=np.float64) for value in normalization)
    n_bands = offset.shape[0]
    shared = group.broadcast_array(np.concatenate([offset, scale, [floor, elapsed]]))
    return (shared[:n_bands], shared[n_bands : 2 * n_bands], float(shared[-2])), float(shared[-1])


class _RunTraining:
    """The starts of one run, trained in turn, written to its folder as they go."""

    def __init__(
        self,
        run: RunDirectory,
        sources: list,
        config: TrainConfig,
        normalization: tuple,
        elapsed: float,
        group: ProcessGroup,
    ) -> None:
        self.run = run
        self.group = group
        self.sources = sources
        self.config = config
        self.normalization = normalization
        self.elapsed = elapsed
        self.device = resolve_device(config.device)
        # Where the selection happens is fixed when the run is created: extending ``steps`` on
        # resume must not move it.
        self.plan = StartPlan.for_run(run.config, config.steps)
        # Every checkpoint is scored on the same windows (start selection, recommendation), by
        # rank 0, which writes the checkpoints.
        self.windows = (
            selection_windows(
                sources,
                config.starts.selection_windows,
                config.data.crop_size + 2 * config.model.receptive_radius,
                config.seed,
            )
            if group.is_writer
            else []
        )
        self._window_labels: dict[int, np.ndarray] = {}  # each start's labels at its last checkpoint

    def events(self) -> Iterator[TrainEvent]:
        """Train every start still to train, select, continue the winner; yield the events."""
        run, plan, config = self.run, self.plan, self.config
        latest = run.latest_checkpoint()
        if plan.starts > 1 and run.selected_start is None:
            # Each start trains to the selection step in turn, its checkpoints written as it
            # goes (a person sees each start ignite or not); then the best-separated continues.
            first = 0 if latest is None else latest.start + int(latest.step >= plan.selection_step)
            for start in range(first, plan.starts):
                resumed = latest is not None and latest.start == start
                trainer = self._trainer(start, latest.checkpoint_id if resumed else None)
                yield from self._train_to(trainer, plan.selection_step, selecting=True)
            if self.group.is_writer:
                scores = [
                    recorded_selection_score(run, start, plan.selection_step) for start in range(plan.starts)
                ]
                winner = selected_start(scores)
                run.record_selection(winner, scores)
                self._update_recommendation()
            if self.group.world_size > 1:  # rank 0 has recorded it: the others follow
                shared = self.group.broadcast_array(
                    np.array([winner, *scores]) if self.group.is_writer else np.zeros(plan.starts + 1)
                )
                winner, scores = int(shared[0]), shared[1:].tolist()
            yield StartSelectedEvent(winner, scores, Path(run.path))
            latest = run.latest_checkpoint()
        if latest is None:
            trainer = self._trainer(0, None)
        else:
            trainer = self._trainer(latest.start, latest.checkpoint_id)
        yield from self._train_to(trainer, config.steps)
        yield FinishedEvent(trainer.step_count, Path(run.path))

    def _trainer(self, start: int, checkpoint_id: str | None) -> Trainer:
        """Start ``start``'s trainer: fresh, or restored from one of its checkpoints."""
        trainer = _new_trainer(self.sources, self.config, self.device, start, self.group)
        if checkpoint_id is None:
            trainer.model.set_normalization(*self.normalization)
        else:
            # The run folder has checked every tensor, the optimizer state against the model's
            # parameters and the step; what remains is specific to this trainer.
            model_state, optimizer_state, training_state = self.run.load_checkpoint_state(checkpoint_id)
            folder = self.run.checkpoint_dir(checkpoint_id)
            trainer.model.load_state_dict(model_state)
            if len(optimizer_state["param_groups"]) != len(trainer.optimizer.param_groups):
                raise CheckpointError(
                    f"{folder / OPTIMIZER_FILE}: {len(optimizer_state['param_groups'])} parameter groups, "
                    f"the trainer has {len(trainer.optimizer.param_groups)}"
                )
            try:
                trainer.optimizer.load_state_dict(optimizer_state)
            except (ValueError, KeyError, TypeError, RuntimeError) as error:
                raise CheckpointError(f"{folder / OPTIMIZER_FILE}: cannot be restored ({error})") from error
            try:
                trainer.load_training_state(training_state)
            except ConfigError:
                raise
            except (ValueError, TypeError, KeyError) as error:
                raise CheckpointError(f"{folder / STATE_FILE}: {error}") from error
        return trainer

    def _train_to(
        self, trainer: Trainer, until: int, *, selecting: bool = False
    ) -> Iterator[ProgressEvent | CheckpointEvent]:
        """Step ``trainer`` to ``until``, writing its checkpoints; when ``selecting`` starts,
        also one at ``until`` (the selection step).
        """
        offset = self.plan.run_step_offset(trainer.start, selecting=selecting)
        steps = _train_steps(
            trainer,
            until,
            self.elapsed,
            self.plan.total_run_steps,
            offset,
            checkpoint_at=until if selecting else None,
        )
        try:
            for event, checkpoint in steps:
                self.elapsed = event.elapsed_s
                info = None
                if checkpoint is not None and self.group.is_writer:
                    checkpoint.stats.update(self._signals(trainer))
                    info = self.run.save_checkpoint(
                        checkpoint.step,
                        checkpoint.model_state,
                        checkpoint.optimizer_state,
                        checkpoint.training_state,
                        checkpoint.stats,
                        start=trainer.start,
                        run_step=offset + checkpoint.step,
                    )
                if info is not None and not selecting:
                    self._update_recommendation()
                if checkpoint is not None:  # the other ranks wait until rank 0's checkpoint is complete
                    self.group.barrier()
                yield event
                if info is not None:
                    yield CheckpointEvent(
                        info.step, info.checkpoint_id, Path(self.run.path), info.start, info.run_step
                    )
        finally:  # also when the run stops (the generator closed) or fails: no reader thread left
            trainer.stream.close()

    def _signals(self, trainer: Trainer) -> dict:
        """The checkpoint's internal quality signals on the selection windows
        (:mod:`~napari_dgc.training.recommendation`).
        """
        labels, features = window_predictions(trainer.checkpoint_model, self.windows)
        signals = {"selection_score": calinski_harabasz(features, labels)}
        previous = self._window_labels.get(trainer.start)
        if previous is None and trainer.step_count > self.config.checkpoint_every:
            previous = self._previous_window_labels(trainer.start)
        if previous is not None:
            signals["agreement"] = normalized_mutual_info(previous, labels)
        self._window_labels[trainer.start] = labels
        return signals

    def _previous_window_labels(self, start: int) -> np.ndarray | None:
        """Labels of ``start``'s latest written checkpoint (a resumed run has none in memory)."""
        written = self.run.checkpoints(start)
        if not written:
            return None
        labels, _ = window_predictions(self.run.load_model(written[-1].checkpoint_id), self.windows)
        return labels

    def _update_recommendation(self) -> None:
        """Recommend one of the continuing start's checkpoints in ``run.json``."""
        continuing = self.run.selected_start or 0
        recommendation = recommend(self.run.checkpoints(continuing))
        if recommendation is not None:
            self.run.recommend(recommendation.checkpoint_id, recommendation.reason)


def _describe_sources(cubes: Sequence, sources: Sequence) -> tuple[list[str], np.ndarray | None, list[dict]]:
    """What ``run.json`` records of the dataset: the cube files, the wavelengths, how to reopen.

    The wavelengths are those of the first opened cube that has them, whether it was given as
    a path (opened by :func:`~napari_dgc.training.sampling.open_sources`) or as a ``Cube``;
    arrays have none. A MATLAB cube records its variable (``key``) and, for a reshaped 2-D
    matrix, its ``shape``, so a resume or ``segment`` reopens it the same way.
    """
    names, wavelengths, open_options = [], None, []
    for cube, source in zip(cubes, sources):
        opened = cube if not isinstance(cube, (str, Path)) else getattr(source, "_cube", None)
        if isinstance(cube, (str, Path)):
            names.append(str(cube))
        elif hasattr(cube, "path"):
            names.append(str(cube.path))
        else:
            continue
        provenance = getattr(opened, "provenance", None) or {}
        options = {}
        if str(getattr(opened, "format", "")).startswith("mat") and "key" in provenance:
            options["key"] = provenance["key"]
        if "pixel_shape" in provenance:
            options["shape"] = list(provenance["pixel_shape"])
        open_options.append(options)
    for source in sources:
        found = getattr(getattr(source, "_cube", None), "wavelengths", None)
        if found is not None:
            wavelengths = np.asarray(found, dtype=np.float64)
            break
    return names, wavelengths, open_options


def _window_stats(results: list[StepResult]) -> dict:
    """Checkpoint statistics: mean losses, active clusters and usage since the last checkpoint."""
    usage = np.mean([result.usage for result in results], axis=0)
    return {
        "losses": {term: float(np.mean([r.losses[term] for r in results])) for term in LOSS_TERMS},
        "active_clusters": results[-1].active_clusters,
        "mean_active_clusters": float(np.mean([r.active_clusters for r in results])),
        "usage": usage.tolist(),
        "usage_entropy": usage_entropy(usage),
        "steps_averaged": len(results),
    }


def _new_trainer(
    sources: list, config: TrainConfig, device: torch.device, start: int, group: ProcessGroup
) -> Trainer:
    """A fresh model and trainer for start ``start`` (0: the run's seed; others: initial weights
    and centroids from a seed derived from it, the same crop pairs).
    """
    if start == 0:
        torch.manual_seed(config.seed)
    else:
        torch.manual_seed(int(np.random.SeedSequence([config.seed, start]).generate_state(1)[0]))
    model = DGCModel(sources[0].n_bands, config.model)
    stream = PairStream.for_config(sources, config.data, config.seed, read_ahead=READ_AHEAD)
    return Trainer(model, stream, config, device, start, group)


def _train_steps(
    trainer: Trainer,
    until: int,
    elapsed: float,
    run_total_steps: int,
    run_step_offset: int,
    checkpoint_at: int | None = None,
) -> Iterator[tuple[ProgressEvent, _Checkpoint | None]]:
    """Step ``trainer`` up to step ``until``, yielding ``(event, checkpoint)`` per step.

    ``checkpoint`` is ``None`` or, every ``checkpoint_every`` steps, at the last step and at
    ``checkpoint_at``, what the checkpoint stores.
    """
    config = trainer.config
    window: list[StepResult] = []
    while trainer.step_count < until:
        started = time.perf_counter()
        result = trainer.step()
        if trainer.group.world_size > 1:  # checkpoint statistics of the whole batch, not a share
            terms = list(result.losses)
            summed = trainer.group.all_reduce_sum(torch.tensor([result.losses[t] for t in terms]))
            result.losses = {t: float(v) / trainer.group.world_size for t, v in zip(terms, summed)}
        elapsed += time.perf_counter() - started
        window.append(result)
        step = trainer.step_count
        checkpoint = None
        if step % config.checkpoint_every == 0 or step in (config.steps, checkpoint_at):
            state = trainer.training_state()
            state["elapsed_s"] = elapsed
            if trainer.group.world_size > 1:  # one process records none: its checkpoints stay as they were
                state["world_size"] = trainer.group.world_size
            stats = _window_stats(window)
            model = trainer.checkpoint_model  # the averaged model exists from the first step on
            stats["bandwidth"] = float(model.bandwidth.detach())
            checkpoint = _Checkpoint(step, model.state_dict(), trainer.optimizer.state_dict(), state, stats)
            window = []
        event = ProgressEvent(
            step,
            config.steps,
            result.losses,
            result.active_clusters,
            float(trainer.optimizer.param_groups[0]["lr"]),
            elapsed,
            trainer.start,
            run_step_offset + step,
            run_total_steps,
        )
        yield event, checkpoint
