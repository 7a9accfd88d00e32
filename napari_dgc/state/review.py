"""State of the checkpoint review: the run shown on the timeline, its checkpoints and figures.

:class:`ReviewModel` holds the run being reviewed, its
:class:`~napari_dgc.inference.checkpoint_review.CheckpointReview` (the engine object that
segments and caches), the list of checkpoints, the current and the chosen checkpoint, whether a
training is producing checkpoints (``live``) and the figures of each checkpoint. The timeline
widget renders it; the train panel feeds it (:meth:`ReviewModel.begin_live`,
:meth:`ReviewModel.add_segmented`, :meth:`ReviewModel.set_live`). Results computed in workers
are matched by run folder and checkpoint id, never by object identity. No Qt or napari here.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from psygnal import Signal

from napari_dgc.config import StartPlan, TrainConfig
from napari_dgc.errors import DGCError
from napari_dgc.inference.checkpoint_review import CheckpointFigures, CheckpointReview, recorded_losses
from napari_dgc.run_folder import CheckpointInfo, Recommendation
from napari_dgc.state.training import CubeSourceLike
from napari_dgc.training.events import start_name

#: Per-checkpoint figures the timeline plots: title → (series name, value of a checkpoint).
FIGURE_PLOTS: dict[str, tuple[str, Callable[[CheckpointFigures], float | None]]] = {
    "NMI to previous checkpoint": ("NMI", lambda f: f.nmi_to_previous),
    "active in cubes": ("active", lambda f: f.active_clusters),
    "usage entropy (normalised)": ("entropy", lambda f: f.usage_entropy),
    "spectral separation": ("separation", lambda f: f.spectral_separation),
}


def same_folder(first: str | Path | None, second: str | Path | None) -> bool:
    """Whether two paths name the same folder (resolved; ``None`` matches nothing)."""
    if first is None or second is None:
        return False
    return os.path.realpath(first) == os.path.realpath(second)


class ReviewModel:
    """Evented state of the checkpoint timeline (see the module docstring).

    Signals
    -------
    run_changed(object)
        Another run (a ``Path``) or other cubes are reviewed; views reset.
    checkpoints_changed()
        The checkpoint list, figures, chosen checkpoint or live flag changed.
    current_changed(object)
        The current checkpoint id changed (or was selected again).
    labels_ready(str, dict)
        Label maps (by source key) of the current checkpoint are available.
    segmentation_requested(str)
        A checkpoint must be segmented: the view runs a worker on :attr:`requests`.
    sweep_requested()
        Figures of checkpoints may be missing: the view runs a worker that fills them in.
    message(str), error(str)
        One line for the user.
    """

    run_changed = Signal(object)
    checkpoints_changed = Signal()
    current_changed = Signal(object)
    labels_ready = Signal(str, dict)
    segmentation_requested = Signal(str)
    sweep_requested = Signal()
    message = Signal(str)
    error = Signal(str)

    def __init__(self) -> None:
        self.run_path: Path | None = None
        self.review: CheckpointReview | None = None
        self.sources: dict[str, CubeSourceLike] = {}
        self.n_clusters = 0
        self.checkpoints: list[CheckpointInfo] = []
        self.figures: dict[str, CheckpointFigures] = {}
        self.current: str | None = None
        self.chosen: str | None = None
        #: The checkpoint training recommends and why (``run.json``), re-read with the list.
        self.recommended: Recommendation | None = None
        self.live = False
        self.total_steps = 0
        self.total_run_steps = 0
        #: Checkpoint ids the review worker should segment (only the newest counts).
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ which run
    def open_run(self, run_dir: str | Path, sources: Sequence[CubeSourceLike]) -> None:
        """Review a run folder on ``sources`` and select its chosen, else recommended, else latest
        checkpoint.

        Raises
        ------
        DGCError or OSError
            The run folder or a cube does not fit.
        """
        cubes = {source.key: source.cube for source in sources}
        review = CheckpointReview(run_dir, cubes)
        with self._lock:
            self.review = review
        self._reset(review.path, sources, review.run.config, live=False)
        self.refresh()
        shown = self.chosen or (self.recommended and self.recommended.checkpoint_id)
        if shown is None:
            try:  # the selected start's latest, which need not be listed last
                latest = review.run.latest_checkpoint()
            except DGCError as error:
                self.error.emit(str(error))
                latest = None
            shown = None if latest is None else latest.checkpoint_id
        ids = self.checkpoint_ids()
        if ids:
            self.select(shown if shown in ids else ids[-1])
        self.sweep_requested.emit()

    def begin_live(self, run_dir: str | Path, sources: Sequence[CubeSourceLike], config: TrainConfig) -> None:
        """A training of ``sources`` into ``run_dir`` with ``config`` starts: follow its checkpoints.

        The review (and its caches) is kept when the same run is resumed on the same cubes.
        """
        same = (
            self.review is not None
            and same_folder(self.review.path, run_dir)
            and set(self.sources) == {source.key for source in sources}
        )
        if not same:
            with self._lock:
                self.review = None
        self._reset(Path(run_dir), sources, config, live=True, keep=same)
        self.refresh()

    def _reset(
        self,
        path: Path,
        sources: Sequence[CubeSourceLike],
        config: TrainConfig,
        *,
        live: bool,
        keep: bool = False,
    ) -> None:
        self.run_path = path
        self.sources = {source.key: source for source in sources}
        self.n_clusters = config.model.n_clusters
        #: Cube pixels per label map pixel along each side (the run's spatial binning).
        self.binning = config.prep.binning
        self.total_steps = config.steps
        self.total_run_steps = StartPlan.for_run(config).total_run_steps
        self.live = live
        if not keep:
            self.checkpoints, self.figures, self.current = [], {}, None
            self.requests = queue.SimpleQueue()
        self.chosen = self.recommended = None
        if self.review is not None:
            try:
                self.chosen = self.review.run.chosen_checkpoint
                self.recommended = self.review.run.recommended_checkpoint
            except DGCError as error:
                self.error.emit(str(error))
        self.run_changed.emit(path)

    def review_for(self, run_dir: str | Path, device: str = "cpu") -> CheckpointReview:
        """The engine's review of ``run_dir`` on the live sources, created once.

        Called by the training worker (another thread) at its first checkpoint, when the run
        folder is complete; emits nothing. A review of a run that is no longer the reviewed
        one is returned but not kept.
        """
        with self._lock:
            if self.review is not None and same_folder(self.review.path, run_dir):
                return self.review
            cubes = {key: source.cube for key, source in self.sources.items()}
            review = CheckpointReview(run_dir, cubes, device=device)
            if same_folder(self.run_path, run_dir):
                self.review = review
            return review

    def set_live(self, live: bool) -> None:
        """Whether a training produces checkpoints; once it stops, missing figures are filled in."""
        self.live = live
        self.refresh()
        if not live:
            self.sweep_requested.emit()

    # ------------------------------------------------------------------ results
    def add_segmented(
        self,
        run_dir: str | Path,
        checkpoint_id: str,
        labels: Mapping[str, np.ndarray],
        figures: CheckpointFigures | None,
    ) -> None:
        """Take a checkpoint segmented by the training worker; follow it while the current
        checkpoint is the newest (the user did not move back).
        """
        if not same_folder(run_dir, self.run_path):
            return  # a result of a run that is no longer reviewed
        ids = self.checkpoint_ids()
        following = self.live and (self.current is None or (bool(ids) and self.current == ids[-1]))
        if figures is not None:
            self.figures[checkpoint_id] = figures
        self.refresh()
        ids = self.checkpoint_ids()
        if following and ids and ids[-1] != self.current:
            self.current = ids[-1]
            self.current_changed.emit(self.current)
        if self.current == checkpoint_id:
            self.labels_ready.emit(checkpoint_id, dict(labels))

    def labels_computed(
        self, run_dir: str | Path, checkpoint_id: str, labels: Mapping[str, np.ndarray]
    ) -> None:
        """Take labels the review worker computed; shown if still the current checkpoint."""
        if same_folder(run_dir, self.run_path) and checkpoint_id == self.current:
            self.labels_ready.emit(checkpoint_id, dict(labels))

    def figures_computed(self, run_dir: str | Path, figures: CheckpointFigures) -> None:
        """Take figures the review worker computed."""
        if same_folder(run_dir, self.run_path):
            self.figures[figures.checkpoint_id] = figures
            self.checkpoints_changed.emit()

    def refresh(self) -> None:
        """Re-read the checkpoint list (a live run grows) and the figures already computed."""
        review = self.review
        if review is not None:
            try:
                self.checkpoints = review.checkpoints()
                self.recommended = review.run.recommended_checkpoint
            except DGCError as error:
                self.error.emit(str(error))
                return
            for info in self.checkpoints:
                figures = review.cached_figures(info.checkpoint_id)
                if figures is not None:
                    self.figures[info.checkpoint_id] = figures
        self.checkpoints_changed.emit()

    # ------------------------------------------------------------------ current and chosen
    def checkpoint_ids(self) -> list[str]:
        """Ids of :attr:`checkpoints`, in training order."""
        return [info.checkpoint_id for info in self.checkpoints]

    def select(self, checkpoint_id: str) -> None:
        """Make ``checkpoint_id`` current and show its labels (from the cache or a worker)."""
        if checkpoint_id not in self.checkpoint_ids():
            raise DGCError(f"no checkpoint {checkpoint_id!r} in {self.run_path}")
        self.current = checkpoint_id
        self.current_changed.emit(checkpoint_id)
        if not self.sources or self.review is None:
            return
        cached = self.review.cached_labels(checkpoint_id)
        if cached is not None:
            self.labels_ready.emit(checkpoint_id, cached)
            return
        self.requests.put(checkpoint_id)
        self.segmentation_requested.emit(checkpoint_id)

    def select_nearest(self, run_step: float) -> None:
        """Select the checkpoint nearest to ``run_step`` (a click on a plot)."""
        if self.checkpoints:
            nearest = min(self.checkpoints, key=lambda info: abs(info.run_step - run_step))
            self.select(nearest.checkpoint_id)

    def choose_current(self) -> None:
        """Record the current checkpoint as the run's chosen model in ``run.json``.

        Raises
        ------
        DGCError or OSError
            It could not be recorded.
        """
        if self.current is None or self.review is None:
            return
        self.review.run.choose(self.current)
        self.chosen = self.current
        self.message.emit(f"Checkpoint {self.current} is now the chosen model of {self.review.path.name}")
        self.checkpoints_changed.emit()

    # ------------------------------------------------------------------ what views draw
    def current_info(self) -> CheckpointInfo | None:
        """The :class:`CheckpointInfo` of the current checkpoint."""
        return next((info for info in self.checkpoints if info.checkpoint_id == self.current), None)

    def describe_current(self) -> str:
        """The current checkpoint: id, position, start and step, and its figures when known."""
        info = self.current_info()
        if info is None:
            return "no checkpoint yet"
        index = self.checkpoint_ids().index(info.checkpoint_id)
        if self.total_run_steps != self.total_steps:  # several starts
            where = (
                f"{start_name(info.start)}, step {info.step}; run step {info.run_step}/{self.total_run_steps}"
            )
        else:
            where = f"step {info.step}/{self.total_steps}"
        text = f"{info.checkpoint_id}  ({index + 1}/{len(self.checkpoints)}, {where})"
        if info.checkpoint_id == self.chosen:
            text += "  ★ chosen"
        if self.recommended is not None and info.checkpoint_id == self.recommended.checkpoint_id:
            text += f"  ✓ recommended: {self.recommended.reason}"
        figures = self.figures.get(info.checkpoint_id)
        if figures is not None:
            nmi = "–" if figures.nmi_to_previous is None else f"{figures.nmi_to_previous:.2f}"
            text += (
                f"\nNMI to previous {nmi} · active in cubes {figures.active_clusters} · "
                f"entropy {figures.usage_entropy:.2f}"
            )
            if figures.spectral_separation is not None:
                text += f" · separation {short_number(figures.spectral_separation)}"
        return text

    def figure_series(self, title: str) -> list[tuple[str, list[int], list[float | None]]]:
        """Series ``(name, run steps, values)`` of a plot of the timeline, one per start.

        ``title`` is a key of :data:`FIGURE_PLOTS` or ``"loss at checkpoint"`` (the total loss
        recorded with the checkpoint).
        """
        if title == "loss at checkpoint":
            name, value = "total", lambda info: recorded_losses(info).get("total")
        else:
            name, getter = FIGURE_PLOTS[title]

            def value(info: CheckpointInfo) -> float | None:
                figures = self.figures.get(info.checkpoint_id)
                return None if figures is None else getter(figures)

        starts = sorted({info.start for info in self.checkpoints})
        series = []
        for start in starts:
            infos = [info for info in self.checkpoints if info.start == start]
            label = start_name(start) if len(starts) > 1 else name
            series.append((label, [info.run_step for info in infos], [value(info) for info in infos]))
        return series

    def marker_steps(self) -> tuple[int | None, int | None, int | None]:
        """Run steps of the current, the chosen and the recommended checkpoint (``None`` if not
        listed).
        """
        steps = {info.checkpoint_id: info.run_step for info in self.checkpoints}
        recommended = None if self.recommended is None else self.recommended.checkpoint_id
        return steps.get(self.current), steps.get(self.chosen), steps.get(recommended)


def short_number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, thousands and millions as ``k`` / ``M``
    (``60200`` -> ``"60.2k"``), so large figures fit the plots' narrow titles.
    """
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            # All integer digits, so 120 000 is "120k", never "1.2e+02k".
            return f"{scaled:.{max(digits, len(str(int(abs(scaled)))))}g}{suffix}"
    return f"{value:.{digits}g}"
