"""State of a training session of the "DGC: Train" panel: status, run, progress and history.

:class:`TrainingSession` is what the panel shows and what a script drives: :meth:`~TrainingSession.start`,
:meth:`~TrainingSession.pause`, :meth:`~TrainingSession.resume` and :meth:`~TrainingSession.stop`
emit requests that the panel's training runner (which owns the background worker) carries out;
the runner feeds the engine's events back with :meth:`~TrainingSession.record`. Views subscribe
to the psygnal signals. No Qt, napari or magicgui here::

    session = panel.session
    session.start(config, run_dir, [cube_source(viewer.layers["leaf"])])
    session.status_changed.connect(print)

Starts are numbered from 0 everywhere, as in checkpoint ids (``start1-step-000100`` is a
checkpoint of start 1) and in ``run.json``.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from psygnal import Signal

from napari_dgc.config import RESUMABLE_SETTINGS, StartPlan, TrainConfig, get_setting, resumed_config
from napari_dgc.errors import CheckpointError, ConfigError, DGCError
from napari_dgc.io.preparation import Preparation
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.manifest import MANIFEST_NAME
from napari_dgc.run_folder.preparation_file import run_preparation
from napari_dgc.training.events import (
    CheckpointEvent,
    FinishedEvent,
    ProgressEvent,
    StartSelectedEvent,
    start_name,
)
from napari_dgc.training.sampling import check_crop_fits, open_sources


class TrainStatus(enum.Enum):
    """What the training session is doing."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


class CubeSourceLike(Protocol):
    """A cube captured for the engine (the GUI's ``CubeSource``): results are routed by ``key``."""

    key: str
    name: str
    cube: Any


def error_message(error: BaseException) -> str:
    """One line for a notification: a user error's own message, else its type and message."""
    return str(error) if isinstance(error, DGCError) else f"{type(error).__name__}: {error}"


def check_start(
    config: TrainConfig, run_dir: str | Path, sources: Sequence[CubeSourceLike], *, resume: bool = False
) -> None:
    """Check, before anything is created, that a training of ``sources`` into ``run_dir`` can start.

    The engine's own checks, run up front: the settings (``TrainConfig.validate``), the cubes
    (all with the same band count, none smaller than the crop: ``training.sampling``), and the
    run folder (a new run: not a file, no run in it yet; a resumed run: readable, same bands and
    model, not being trained by another process). Cubes are named by their layer names.

    Raises
    ------
    DGCError
        The first problem found, in one sentence.
    """
    if not sources:
        raise ConfigError("tick at least one cube layer to train on")
    config.validate()
    path = Path(run_dir).expanduser()
    try:
        # The preparation's own checks (reference files, band range, binning) run here too.
        run = RunDirectory.open(path) if resume else None
        preparation = run_preparation(run) if resume else Preparation.from_settings(config.prep)
        sampled = open_sources([source.cube for source in sources], preparation)
        if resume:
            run.ensure_compatible(config, sampled[0].n_bands)
            holder = run.holder() if hasattr(run, "holder") else None
            if holder is not None:
                raise CheckpointError(f"run {path} is busy: {holder.describe()}")
        check_crop_fits(sampled, config.data.crop_size)
    except DGCError as error:
        raise type(error)(_with_layer_names(str(error), sources)) from error
    if not resume:
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: is a file, not a run folder")
        if (path / MANIFEST_NAME).exists():
            raise CheckpointError(
                f"{path / MANIFEST_NAME}: a run already exists here; "
                "open it to resume or choose another folder"
            )


def _with_layer_names(message: str, sources: Sequence[CubeSourceLike]) -> str:
    """``message`` with the engine's names of in-memory cubes ("array 1") replaced by layer names."""
    names = [source.name for source in sources]

    def layer(match: re.Match) -> str:
        index = int(match.group(1))
        return f'layer "{names[index]}"' if index < len(names) else match.group(0)

    return re.sub(r"\barray (\d+)\b", layer, message)


class GrowingColumn:
    """A 1-D numpy array that grows by appending (amortised O(1), capacity doubles).

    :attr:`values` is a view, not a copy: the plots redraw ten times a second from columns
    of thousands of steps, and converting Python lists each time would cost the GUI thread
    milliseconds per plot. Values already in a view never change.
    """

    def __init__(self, dtype=np.float64) -> None:
        self._data = np.empty(256, dtype=dtype)
        self._size = 0

    def append(self, value) -> None:
        """Add one value at the end."""
        if self._size == self._data.size:
            grown = np.empty(2 * self._data.size, dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size] = value
        self._size += 1

    @property
    def values(self) -> np.ndarray:
        """The values appended so far (a read-only view)."""
        view = self._data[: self._size]
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return self._size


class TrainingHistory:
    """Loss terms and clusters active in each step, per step of the run (all starts in turn,
    ``ProgressEvent.run_step``), plus timing for the ETA.
    """

    def __init__(self) -> None:
        self._steps = GrowingColumn(np.int64)
        self._losses: dict[str, GrowingColumn] = {}
        self._active_in_step = GrowingColumn(np.int64)
        self.latest: ProgressEvent | None = None
        self._first_step: int | None = None
        self._first_time = 0.0

    @property
    def steps(self) -> np.ndarray:
        """Run step (``ProgressEvent.run_step``) of every recorded event."""
        return self._steps.values

    @property
    def losses(self) -> dict[str, np.ndarray]:
        """Each loss term per recorded step (NaN where the term was not reported)."""
        return {name: column.values for name, column in self._losses.items()}

    @property
    def active_in_step(self) -> np.ndarray:
        """Clusters holding at least :data:`~napari_dgc.training.events.ACTIVE_SHARE` (1 %) of a
        step's hard labels, per recorded step (``ProgressEvent.active_clusters``). Not the
        checkpoint figure "active in cubes", which counts over the reviewed cubes' pixels.
        """
        return self._active_in_step.values

    def add(self, event: ProgressEvent) -> None:
        """Record one optimiser step."""
        if self._first_step is None:
            self._first_step, self._first_time = event.run_step, time.perf_counter()
        recorded = len(self._steps)
        self._steps.append(event.run_step)
        for name, value in event.losses.items():
            if name not in self._losses:
                # A term that appears late (or a resumed run) is padded so all columns align.
                self._losses[name] = GrowingColumn()
                for _ in range(recorded):
                    self._losses[name].append(np.nan)
            self._losses[name].append(float(value))
        for column in self._losses.values():
            if len(column) < recorded + 1:
                column.append(np.nan)
        self._active_in_step.append(int(event.active_clusters))
        self.latest = event

    def steps_per_second(self) -> float | None:
        """Rate measured since the first step of this session (checkpoints included)."""
        if self.latest is None or self._first_step is None or self.latest.run_step <= self._first_step:
            return None
        elapsed = time.perf_counter() - self._first_time
        return (self.latest.run_step - self._first_step) / elapsed if elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        """Seconds left at the measured rate, or ``None`` before it can be measured."""
        rate = self.steps_per_second()
        if rate is None or self.latest is None:
            return None
        return max(0.0, (self.latest.run_total_steps - self.latest.run_step) / rate)


@dataclass(frozen=True)
class StartRequest:
    """What :meth:`TrainingSession.start` asks the runner to train."""

    config: TrainConfig
    run_dir: Path
    sources: tuple[CubeSourceLike, ...]
    resume: bool


class TrainingSession:
    """Evented state of the panel's training (see the module docstring).

    Signals
    -------
    status_changed(TrainStatus)
        The status changed.
    started()
        A worker started training :attr:`run_dir`: the history and progress were reset.
    run_changed(object)
        The run folder (a ``Path`` or ``None``) or its settings (:attr:`config`) changed.
    progress()
        A step was recorded in :attr:`history` (views redraw at their own pace).
    message(str)
        One line for the user (a start was selected, training finished).
    failed(str)
        Training could not start or stopped with an error (also :attr:`last_error`).
    start_requested(StartRequest), pause_requested(), resume_requested(), stop_requested()
        For the runner that owns the worker.
    """

    status_changed = Signal(TrainStatus)
    started = Signal()
    run_changed = Signal(object)
    progress = Signal()
    message = Signal(str)
    failed = Signal(str)
    start_requested = Signal(StartRequest)
    pause_requested = Signal()
    resume_requested = Signal()
    stop_requested = Signal()

    def __init__(self) -> None:
        self._status = TrainStatus.IDLE
        #: The run folder that Resume continues (trained here, or opened).
        self.run_dir: Path | None = None
        #: Settings of :attr:`run_dir` (what it trains with, or was created with), if known.
        self.config: TrainConfig | None = None
        #: The cubes of the current training.
        self.sources: tuple[CubeSourceLike, ...] = ()
        self.history = TrainingHistory()
        #: Steps of all starts of the current training (``StartPlan.total_run_steps``).
        self.total_run_steps = 0
        #: The start that continued after the selection, once selected.
        self.selected_start: int | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> TrainStatus:
        """Current status."""
        return self._status

    @status.setter
    def status(self, value: TrainStatus) -> None:
        if value is not self._status:
            self._status = value
            self.status_changed.emit(value)

    # ------------------------------------------------------------------ requests
    def start(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        sources: Sequence[CubeSourceLike],
        *,
        resume: bool = False,
    ) -> bool:
        """Ask for a training of ``sources`` into ``run_dir``; return whether it runs now.

        Refused (``False``) unless idle. The inputs are checked first (:func:`check_start`): a
        problem is emitted as :attr:`failed` and nothing is created. A failure to launch is
        emitted as :attr:`failed` too.
        """
        if self._status is not TrainStatus.IDLE:
            return False
        try:
            check_start(config, run_dir, sources, resume=resume)
        except DGCError as error:
            self.fail(f"Cannot start training: {error_message(error)}")
            return False
        self.start_requested.emit(StartRequest(config, Path(run_dir), tuple(sources), resume))
        return self._status is TrainStatus.RUNNING

    def resume_run(self, form: TrainConfig, sources: Sequence[CubeSourceLike]) -> bool:
        """Continue :attr:`run_dir` from its latest checkpoint with the run's own settings and the
        changes a resume may make (``RESUMABLE_SETTINGS``) taken from ``form``.

        Raises
        ------
        DGCError
            The run cannot be opened or ``form`` is invalid.
        """
        if self._status is not TrainStatus.IDLE or self.run_dir is None:
            return False
        created = RunDirectory.open(self.run_dir).config
        config = resumed_config(created, {key: get_setting(form, key) for key in RESUMABLE_SETTINGS})
        return self.start(config, self.run_dir, sources, resume=True)

    def pause(self) -> None:
        """Ask the worker to stop pulling training events."""
        if self._status is TrainStatus.RUNNING:
            self.pause_requested.emit()

    def resume(self) -> None:
        """Ask a paused worker to go on."""
        if self._status is TrainStatus.PAUSED:
            self.resume_requested.emit()

    def stop(self) -> None:
        """Ask the training to stop; the run keeps every checkpoint written so far."""
        if self._status in (TrainStatus.RUNNING, TrainStatus.PAUSED):
            self.stop_requested.emit()

    # ------------------------------------------------------------------ runner side
    def set_run(self, run_dir: str | Path | None, config: TrainConfig | None) -> None:
        """Make ``run_dir`` (with its settings) the run that Resume continues."""
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.config = config
        self.run_changed.emit(self.run_dir)

    def begin(self, request: StartRequest) -> None:
        """A worker now trains ``request``: reset the history and progress."""
        self.sources = request.sources
        self.history = TrainingHistory()
        self.total_run_steps = StartPlan.for_run(request.config).total_run_steps
        self.selected_start = None
        self.last_error = None
        self.set_run(request.run_dir, request.config)
        self.started.emit()
        self.status = TrainStatus.RUNNING

    def record(self, event: object) -> None:
        """Take one event of the training generator."""
        if isinstance(event, ProgressEvent):
            self.history.add(event)
            self.total_run_steps = event.run_total_steps
            self.progress.emit()
        elif isinstance(event, CheckpointEvent):
            if self.run_dir != Path(event.run_dir):
                self.set_run(event.run_dir, self.config)
        elif isinstance(event, StartSelectedEvent):
            self.selected_start = event.start
            scores = ", ".join(
                f"{name}: {value:,.0f}"
                for name, value in ((start_name(i), v) for i, v in enumerate(event.scores))
            )
            self.message.emit(
                f"Start {event.start} continues: its clusters separate the spectra best "
                f"(selection score per start: {scores})"
            )
        elif isinstance(event, FinishedEvent):
            self.message.emit(f"Training finished after {event.step} steps: {event.run_dir}")

    def fail(self, message: str) -> None:
        """Training could not start or stopped with an error."""
        self.last_error = message
        self.failed.emit(message)

    def end(self) -> None:
        """The worker is gone. A run that was never created (training failed first) is
        forgotten, so Resume does not offer it.
        """
        if self.run_dir is not None and not (self.run_dir / MANIFEST_NAME).exists():
            self.set_run(None, None)
        self.status = TrainStatus.IDLE

    # ------------------------------------------------------------------ progress
    def progress_text(self) -> str:
        """One line: ETA, rate and the clusters active in the latest step (while running)."""
        event = self.history.latest
        if self._status is TrainStatus.PAUSED and event is not None:
            return f"paused after step {event.run_step} of {event.run_total_steps}"
        if self._status is not TrainStatus.RUNNING or event is None:
            return self._status.value if self._status is TrainStatus.IDLE else f"{self._status.value}…"
        eta, rate = self.history.eta_seconds(), self.history.steps_per_second()
        parts = [f"ETA {format_duration(eta)}" if eta is not None else "ETA …"]
        if rate is not None:
            parts.append(f"{rate:.2f} steps/s")
        parts.append(f"active in step {event.active_clusters}")
        return " · ".join(parts)


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
