"""State of the training panel: its status (with a signal) and the history of one training.

Kept apart from the widget so the widget only renders it: worker events update the state,
a timer redraws the plots from it at most ten times a second.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from psygnal import Signal

from napari_dgc.training import ProgressEvent


class TrainStatus(enum.Enum):
    """What the training panel is doing."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


@dataclass
class TrainingHistory:
    """Loss terms and active clusters per optimiser step, plus timing for the ETA."""

    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    active_clusters: list[int] = field(default_factory=list)
    latest: ProgressEvent | None = None
    _first_step: int | None = None
    _first_time: float = 0.0

    def add(self, event: ProgressEvent) -> None:
        """Record one optimiser step."""
        if self._first_step is None:
            self._first_step, self._first_time = event.step, time.perf_counter()
        self.steps.append(event.step)
        for name, value in event.losses.items():
            # A term that appears late (or a resumed run) is padded so all lists align.
            values = self.losses.setdefault(name, [float("nan")] * (len(self.steps) - 1))
            values.append(float(value))
        for values in self.losses.values():
            if len(values) < len(self.steps):
                values.append(float("nan"))
        self.active_clusters.append(int(event.active_clusters))
        self.latest = event

    def steps_per_second(self) -> float | None:
        """Rate measured since the first step of this session (checkpoints included)."""
        if self.latest is None or self._first_step is None or self.latest.step <= self._first_step:
            return None
        elapsed = time.perf_counter() - self._first_time
        return (self.latest.step - self._first_step) / elapsed if elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        """Seconds left at the measured rate, or ``None`` before it can be measured."""
        rate = self.steps_per_second()
        if rate is None or self.latest is None:
            return None
        return max(0.0, (self.latest.total_steps - self.latest.step) / rate)


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
