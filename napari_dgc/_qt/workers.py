"""Background workers of the training panel and the checkpoint timeline.

Everything slow runs here, off the GUI thread: the training generator and the segmentation
of cubes at checkpoints. The GUI thread only receives small results (label arrays keyed by
cube-layer identity, figures, progress events) through the workers' ``yielded`` signal.

PyTorch is imported by the worker, never by this module: importing it takes seconds, and the
panels (which import this module) must dock at once (``tests/test_gui_responsiveness.py``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QMainWindow, QWidget

from napari_dgc.config import TrainConfig
from napari_dgc.inference.checkpoint_review import CheckpointFigures, CheckpointReview, CubeInput
from napari_dgc.inference.segmentation import usable_cores
from napari_dgc.training.events import CheckpointEvent

#: Training generators running now (each napari window may run one), guarded by the lock.
_running_trainings = 0
_running_trainings_lock = threading.Lock()


def segmentation_workers() -> int:
    """Tiles a checkpoint segmentation runs at once: every core while no training runs.

    While a training runs it keeps all cores but one (see :func:`start_training_worker`), and
    so does segmentation, so the GUI thread keeps a core.
    """
    with _running_trainings_lock:
        training = _running_trainings > 0
    return max(1, usable_cores() - 1) if training else usable_cores()


class ClosingGeneratorWorker(GeneratorWorker):
    """A :class:`GeneratorWorker` that closes its generator in the worker thread when it stops,
    and whose pause waits until the GUI has taken every event yielded before it.

    napari's worker only breaks out of its loop on ``quit()``; closing the generator here makes
    its ``finally`` blocks (the engine's clean stop) run at once, in the worker thread, instead
    of whenever the garbage collector gets to it. :attr:`done` is set once that has happened,
    so closing napari can wait for it without running the Qt event loop.

    Pausing: the step being computed when Pause is clicked finishes and is yielded; then, if the
    receiver calls :meth:`acknowledge` for every yielded value (:meth:`track_delivery`), the
    worker waits until it has (at most :data:`PAUSE_DELIVERY_TIMEOUT_S`) before it reports
    ``paused`` / :attr:`is_paused`. So nothing the worker yielded arrives after it is paused.
    """

    #: Longest wait, on pausing, for the GUI to take the values already yielded.
    PAUSE_DELIVERY_TIMEOUT_S = 2.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.done = threading.Event()
        self._yielded_count = 0
        self._acknowledged_count = 0
        self._tracking = False

    def track_delivery(self) -> None:
        """The receiver will call :meth:`acknowledge` once per yielded value (GUI thread)."""
        self._tracking = True

    def acknowledge(self) -> None:
        """One yielded value was taken by the receiver."""
        self._acknowledged_count += 1

    def _wait_for_delivery(self) -> None:
        deadline = time.monotonic() + self.PAUSE_DELIVERY_TIMEOUT_S
        while (
            self._tracking
            and self._acknowledged_count < self._yielded_count
            and not self.abort_requested
            and time.monotonic() < deadline
        ):
            time.sleep(0.005)

    def work(self):
        try:
            return self._loop()
        finally:
            try:
                self._gen.close()
            finally:
                self.done.set()

    def _loop(self):
        # superqt's GeneratorWorker.work, waiting for delivery before it reports "paused".
        while True:
            if self.abort_requested:
                self.aborted.emit()
                break
            if self._paused:
                if self._resume_requested:
                    self._paused = False
                    self._resume_requested = False
                    self.resumed.emit()
                else:
                    time.sleep(self._pause_interval)
                    continue
            elif self._pause_requested:
                self._wait_for_delivery()
                self._paused = True
                self._pause_requested = False
                self.paused.emit()
                continue
            try:
                _input = self._next_value()
                output = self._gen.send(_input)
                self._yielded_count += 1
                self.yielded.emit(output)
            except StopIteration as exc:
                return exc.value
            except RuntimeError as exc:
                return exc  # the worker was probably deleted (reported by WorkerBase.run)
        return None


class _CloseWatcher(QObject):
    """Calls ``callback`` when the main window holding ``owner`` receives its Close event.

    The window is Qt's public ``owner.window()``, looked up once control returns to the event
    loop (napari docks a widget right after building it) and again whenever the owner is
    shown or moved, so a widget docked later is covered too.
    """

    def __init__(self, callback: Callable[[], None], owner: QWidget):
        super().__init__(owner)
        self._callback = callback
        self._owner = owner
        self._window: QMainWindow | None = None
        owner.installEventFilter(self)
        QTimer.singleShot(0, self._find_window)

    def _find_window(self) -> None:
        window = self._owner.window()
        if isinstance(window, QMainWindow) and window is not self._window:
            if self._window is not None:
                self._window.removeEventFilter(self)
            window.installEventFilter(self)
            self._window = window

    def eventFilter(self, watched, event) -> bool:
        if watched is self._owner and event.type() in (QEvent.Show, QEvent.ParentChange):
            QTimer.singleShot(0, self._find_window)
        elif watched is self._window and event.type() == QEvent.Close:
            self._callback()
        return False


def call_on_window_close(owner: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback`` (on the GUI thread) when the main window docking ``owner`` closes.

    Used to stop and wait for workers, so no thread is left writing files or emitting
    signals into deleted Qt objects when napari exits. ``owner`` owns the event filter.
    """
    _CloseWatcher(callback, owner)


def train(cubes: Sequence, config: TrainConfig, run_dir: Path, *, resume: bool) -> Generator:
    """:func:`napari_dgc.training.loop.train`, imported when first called (it imports torch)."""
    from napari_dgc.training.loop import train as engine_train

    return engine_train(cubes, config, run_dir, resume=resume)


@dataclass(frozen=True)
class CheckpointSegmented:
    """Label maps (by cube key) and figures of a checkpoint of the run in ``run_dir``,
    computed in a worker (matched to the reviewed run by its folder, not by object).
    """

    run_dir: Path
    checkpoint_id: str
    labels: dict[str, np.ndarray]
    figures: CheckpointFigures | None


@dataclass(frozen=True)
class FiguresComputed:
    """Figures of a checkpoint of the run in ``run_dir`` computed by the review worker's sweep."""

    run_dir: Path
    figures: CheckpointFigures


def training_events(
    train_inputs: Sequence[CubeInput],
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    open_review: Callable[[Path, str], CheckpointReview] | None,
) -> Generator:
    """Drive :func:`napari_dgc.training.loop.train`, segmenting the reviewed cubes at each checkpoint.

    Yields the engine's events unchanged and, after every ``CheckpointEvent``, a
    :class:`CheckpointSegmented`. ``open_review(run_dir, device)`` (the review model's
    ``review_for``) gives the engine's review of the run at the first checkpoint, when the run
    folder is complete; ``None``: no segmentation. While it runs, :func:`segmentation_workers`
    leaves a core to the GUI thread.
    """
    global _running_trainings
    from napari_dgc.model.device import resolve_device  # imports torch: in the worker thread

    events = train(list(train_inputs), config, run_dir, resume=resume)
    review: CheckpointReview | None = None
    with _running_trainings_lock:
        _running_trainings += 1
    try:
        for event in events:
            yield event
            if isinstance(event, CheckpointEvent) and open_review is not None:
                if review is None:
                    review = open_review(Path(event.run_dir), str(resolve_device(config.device)))
                workers = segmentation_workers()
                labels = review.labels(event.checkpoint_id, workers=workers)
                figures = review.figures(event.checkpoint_id, workers=workers)
                yield CheckpointSegmented(Path(event.run_dir), event.checkpoint_id, labels, figures)
    finally:
        with _running_trainings_lock:
            _running_trainings -= 1
        events.close()


def _training_in_worker(*args, **kwargs) -> Generator:
    """:func:`training_events` after importing PyTorch (seconds) here, in the worker thread, and
    limiting it to all cores but one: measured on the 2-core machine, two torch threads push the
    GUI thread's p95 tick gap from 47 to 62 ms (docs/benchmarks.md).
    """
    import torch

    torch.set_num_threads(max(1, usable_cores() - 1))
    return (yield from training_events(*args, **kwargs))


def start_training_worker(
    connect: Mapping[str, Callable],
    *args,
    **kwargs,
) -> ClosingGeneratorWorker:
    """Start :func:`training_events` in a worker; errors go to ``connect["errored"]`` only.

    Returns at once: PyTorch is imported and limited to all cores but one in the worker.
    """
    return create_worker(
        _training_in_worker,
        *args,
        _connect=dict(connect),
        _worker_class=ClosingGeneratorWorker,
        _ignore_errors=True,
        **kwargs,
    )


def review_events(review: CheckpointReview, requests: queue.SimpleQueue, *, sweep: bool) -> Generator:
    """Serve checkpoint requests of the timeline, then (if ``sweep``) fill in missing figures.

    Only the newest queued request is served (the user dragging the slider queues many).
    For a request it yields the labels first (so the image updates as soon as possible), then
    the figures. Returns when there is nothing left to do; the timeline starts a new worker
    for the next request.
    """
    while True:
        latest = None
        while not requests.empty():
            latest = requests.get_nowait()
        if latest is not None:
            labels = review.labels(latest, workers=segmentation_workers())
            yield CheckpointSegmented(review.path, latest, labels, None)
            yield FiguresComputed(review.path, review.figures(latest, workers=segmentation_workers()))
            continue
        missing = review.checkpoints_without_figures() if sweep else []
        if not missing:
            return
        yield FiguresComputed(review.path, review.figures(missing[0], workers=segmentation_workers()))


def start_review_worker(
    connect: Mapping[str, Callable], review: CheckpointReview, requests: queue.SimpleQueue, *, sweep: bool
) -> ClosingGeneratorWorker:
    """Start :func:`review_events` in a worker; errors go to ``connect["errored"]`` only."""
    return create_worker(
        review_events,
        review,
        requests,
        sweep=sweep,
        _connect=dict(connect),
        _worker_class=ClosingGeneratorWorker,
        _ignore_errors=True,
    )
