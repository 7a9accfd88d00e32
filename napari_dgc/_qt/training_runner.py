"""Carries out the training session's requests: the background worker of the train panel.

:class:`TrainingRunner` listens to a :class:`~napari_dgc.state.training.TrainingSession`'s
requests (start, pause, resume, stop), runs :func:`~napari_dgc._qt.workers.training_events` in a
worker, and feeds what the worker yields back into the models: engine events into the session,
segmented checkpoints into the :class:`~napari_dgc.state.review.ReviewModel`. Views never see
the worker; they render the models.
"""

from __future__ import annotations

import gc
import logging
import traceback

from qtpy.QtCore import QEventLoop, QObject, QTimer
from qtpy.QtWidgets import QApplication

from napari_dgc.errors import DGCError
from napari_dgc.state.review import ReviewModel
from napari_dgc.state.training import StartRequest, TrainingSession, TrainStatus, error_message
from napari_dgc.training.events import ProgressEvent

from .workers import CheckpointSegmented, ClosingGeneratorWorker, start_training_worker

logger = logging.getLogger(__name__)


class TrainingRunner(QObject):
    """Owns the training worker of one panel (see the module docstring).

    Parameters
    ----------
    session : TrainingSession
        Whose requests are carried out and which records the events.
    review : ReviewModel
        Receives the checkpoints segmented during training.
    """

    def __init__(self, session: TrainingSession, review: ReviewModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.review = review
        self.worker: ClosingGeneratorWorker | None = None
        #: A started session whose worker is launched on the next turn of the event loop.
        self._pending: StartRequest | None = None
        session.start_requested.connect(self._launch)
        session.pause_requested.connect(self._pause)
        session.resume_requested.connect(self._resume)
        session.stop_requested.connect(self._stop)

    def _launch(self, request: StartRequest) -> None:
        """Answer the Start click at once: the session runs now (buttons, folded settings);
        the cluster layers and the worker follow on the next turn of the event loop.

        The inputs were checked by ``TrainingSession.start`` before this request.
        """
        self.session.begin(request)  # the panel folds its settings to make room
        self._pending = request
        QTimer.singleShot(0, self._launch_worker)

    def _launch_worker(self) -> None:
        request, self._pending = self._pending, None
        if request is None:  # stopped before it began
            return
        # The timeline creates the cluster layers now, not in the middle of training.
        self.review.begin_live(request.run_dir, request.sources, request.config)
        # Paint the new layers and the folded settings now, before the worker competes for the
        # GIL and the CPU: painted alongside the worker's start-up, this first frame froze the
        # GUI for 200-250 ms. User input waits, so Start cannot be re-entered meanwhile.
        QApplication.processEvents(QEventLoop.ExcludeUserInputEvents)
        # napari, vispy and torch make ~400 000 objects that the cyclic garbage collector scans
        # in every full collection: 0.2-0.5 s with the GIL held, the longest freezes of the GUI
        # while training. Freezing them (until training ends) leaves only the objects created
        # since then to scan.
        gc.freeze()
        self.worker = start_training_worker(
            {
                "yielded": self._on_event,
                "errored": self._on_error,
                "finished": self._on_finished,
                "paused": self._on_paused,
            },
            [source.cube for source in request.sources],
            request.config,
            request.run_dir,
            resume=request.resume,
            open_review=self.review.review_for,
        )
        self.worker.track_delivery()  # a pause waits until every yielded event is recorded
        if self.session.status is TrainStatus.PAUSED:  # paused while the layers were made
            self.worker.pause()

    def _pause(self) -> None:
        if self.worker is not None:
            self.worker.pause()
        self.session.status = TrainStatus.PAUSED

    def _resume(self) -> None:
        if self.worker is not None:
            self.worker.resume()
        self.session.status = TrainStatus.RUNNING

    def _stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.session.status = TrainStatus.STOPPING
        elif self._pending is not None:  # the worker was not launched yet
            self._pending = None
            self.session.end()

    # ------------------------------------------------------------------ worker results
    def _on_event(self, event: object) -> None:
        try:
            self._record(event)
        finally:
            if self.worker is not None:
                self.worker.acknowledge()

    def _record(self, event: object) -> None:
        if isinstance(event, CheckpointSegmented):
            self.review.add_segmented(event.run_dir, event.checkpoint_id, event.labels, event.figures)
            return
        if isinstance(event, ProgressEvent) and self.session.history.latest is None:
            # Building the optimiser imported torch._dynamo (~800 modules, ~100 000 objects)
            # in the worker the first time: freeze those too.
            gc.freeze()
        self.session.record(event)

    def _on_paused(self) -> None:
        """The worker stopped after the step it was computing: views show where it stopped."""
        self.session.progress.emit()

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, DGCError):  # the user's input: the message says it all
            logger.warning("training stopped: %s", error)
        else:
            logger.error("training failed:\n%s", "".join(traceback.format_exception(error)))
        self.session.fail(f"Training stopped: {error_message(error)}")

    def _on_finished(self) -> None:
        self.worker = None
        gc.unfreeze()  # objects from before the Start click are collectable again
        self.session.end()
        self.review.set_live(False)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop the worker and wait for its clean stop (napari is closing)."""
        worker = self.worker
        if worker is None:
            return
        worker.quit()
        # The current step or checkpoint finishes, then the engine closes cleanly.
        if not worker.done.wait(timeout_s):
            logger.warning("training worker did not stop within %.0f s", timeout_s)
        gc.unfreeze()  # the worker's "finished" may never be delivered now
