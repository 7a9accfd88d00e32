"""State of the training panel: its status (with a signal) and the history of one training.

Kept apart from the widget so the widget only renders it: worker events update the state,
a timer redraws the plots from it at most ten times a second.
"""

from __future__ import annotations

import enum
import time

import numpy as np
from psygnal import Signal

from napari_dgc.training.events import ProgressEvent


class TrainStatus(enum.Enum):
    """What the training panel is doing."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


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
    """Loss terms and active clusters per step of the run (all starts in turn,
    ``ProgressEvent.run_step``), plus timing for the ETA."""

    def __init__(self) -> None:
        self._steps = GrowingColumn(np.int64)
        self._losses: dict[str, GrowingColumn] = {}
        self._active_clusters = GrowingColumn(np.int64)
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
    def active_clusters(self) -> np.ndarray:
        """Active clusters per recorded step."""
        return self._active_clusters.values

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
        self._active_clusters.append(int(event.active_clusters))
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


class TrainState:
    """Status of the panel, emitting :attr:`status_changed` on every change."""

    status_changed = Signal(TrainStatus)

    def __init__(self) -> None:
        self._status = TrainStatus.IDLE
        self.history = TrainingHistory()

    @property
    def status(self) -> TrainStatus:
        """Current status."""
        return self._status

    @status.setter
    def status(self, value: TrainStatus) -> None:
        if value is not self._status:
            self._status = value
            self.status_changed.emit(value)
