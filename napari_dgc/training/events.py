"""The events :func:`~napari_dgc.training.loop.train` yields, in the order a consumer sees them.

One :class:`ProgressEvent` per optimiser step, a :class:`CheckpointEvent` after each checkpoint
is fully written, a :class:`StartSelectedEvent` when a run with several starts picks the one
that continues, and a :class:`FinishedEvent` at the end. The CLI prints them; the GUI's training
session model records them. Plain frozen dataclasses: they cross threads safely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def start_name(start: int, count: int | None = None) -> str:
    """How a start is named to a person: ``"start 1"``, with ``count`` ``"start 1 (starts 0–2)"``.

    0-based, like the checkpoint ids (``start1-step-000100``) and ``run.json``, so a label never
    disagrees with the id next to it; the CLI and the panels use this one name.
    """
    return f"start {start}" + (f" (starts 0–{count - 1})" if count and count > 1 else "")


#: Names of the weighted loss terms a :class:`ProgressEvent` reports, and their sum.
LOSS_TERMS = ("total", "compact", "orth", "consistency", "anchor")

#: Share of a step's hard labels a cluster needs to count in ``ProgressEvent.active_clusters``
#: (a progress figure; it changes nothing in the training).
ACTIVE_SHARE = 0.01


@dataclass(frozen=True)
class ProgressEvent:
    """One optimiser step done.

    ``losses`` holds the weighted terms of :data:`LOSS_TERMS` and their sum ``total``;
    ``elapsed_s`` counts training time only (not the time the consumer paused), including
    earlier sessions of a resumed run and all starts.
    ``start`` is the start the step belongs to (``TrainConfig.starts.count``): with several starts,
    steps ``1 .. starts.steps`` come once per start, then the selected start continues to
    ``total_steps``. ``run_step`` of ``run_total_steps`` counts the steps of all starts
    together (what a progress bar shows); both equal ``step`` / ``total_steps`` with one start.
    """

    step: int
    total_steps: int
    losses: dict[str, float]
    active_clusters: int  # clusters holding at least ACTIVE_SHARE of the step's hard labels
    learning_rate: float
    elapsed_s: float
    start: int = 0
    run_step: int | None = None
    run_total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.run_step is None:
            object.__setattr__(self, "run_step", self.step)
        if self.run_total_steps is None:
            object.__setattr__(self, "run_total_steps", self.total_steps)


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint was fully written and listed in ``run.json`` (``start`` and ``run_step`` as
    in :class:`ProgressEvent`).
    """

    step: int
    checkpoint_id: str
    run_dir: Path
    start: int = 0
    run_step: int | None = None


@dataclass(frozen=True)
class StartSelectedEvent:
    """Every start has trained to the selection step; ``start`` continues (the highest of
    ``scores``, one per start: :func:`~napari_dgc.training.starts.selection_score`) and is
    recorded in ``run.json``.
    """

    start: int
    scores: list[float]
    run_dir: Path


@dataclass(frozen=True)
class FinishedEvent:
    """Training reached ``total_steps``."""

    step: int
    run_dir: Path
