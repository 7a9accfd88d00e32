"""The checkpoint timeline: browse a run's checkpoints and choose where training should stop.

A slider runs over every checkpoint of a run, growing while the run trains. Moving it shows
that checkpoint's cluster maps on the "DGC clusters" Labels layers (segmented in a background
worker and cached) and marks it on small plots of the stability figures (NMI to the previous
checkpoint, active clusters, usage entropy, losses, spectral separation), so the window in
which meaningful clusters "ignite" can be seen and picked. "Use this checkpoint" records the
choice in the run's ``run.json``; segmentation and export then use that model.

The widget is embedded in the "DGC: Train" panel and is also its own dock widget
("DGC: Checkpoints") to open a run folder later, including runs trained with the CLI.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path

import napari
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_dgc.inference.checkpoint_review import CheckpointFigures, CheckpointReview, recorded_losses
from napari_dgc.errors import DGCError
from napari_dgc.io import open_cube
from napari_dgc.run_folder import CheckpointInfo
from napari_dgc.config import StartPlan

from .cube_layers import CubeSource, clusters_layer, cube_source, is_cube_layer, is_reader_cube, show_clusters
from .plots import SparklineGrid, short_number
from .workers import CheckpointSegmented, FiguresComputed, call_on_window_close, start_review_worker

CURRENT_MARKER = None  # the theme's text colour
CHOSEN_MARKER = "#ffd700"


def error_message(error: BaseException) -> str:
    """One line for a notification: a user error's own message, else its type and message."""
    return str(error) if isinstance(error, DGCError) else f"{type(error).__name__}: {error}"


class TimelineWidget(QWidget):
    """Slider over the checkpoints of one run, with stability plots and "Use this checkpoint".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose cube layers are segmented and whose Labels layers are updated.

    Signals
    -------
    run_opened(str)
        A run folder was opened with :meth:`open_run` (its path).
    checkpoint_shown(str)
        A checkpoint's cluster maps are now on the Labels layers (its id).
    checkpoint_chosen(str)
        "Use this checkpoint" recorded this id in the run.
    """

    run_opened = Signal(str)
    checkpoint_shown = Signal(str)
    checkpoint_chosen = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.review: CheckpointReview | None = None
        self.sources: dict[str, CubeSource] = {}
        self.checkpoints: list[CheckpointInfo] = []
        self.figures: dict[str, CheckpointFigures] = {}
        self.labels_layers: dict[str, Labels] = {}
        self.shown_checkpoint: str | None = None
        self.chosen_checkpoint: str | None = None
        self.total_steps = 0
        self.total_run_steps = 0
        self.live = False
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._review_worker = None
        self._build()
        self._update_enabled()
        call_on_window_close(self.viewer, self.shutdown, self)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.run_label = QLabel("No run open")
        self.run_label.setWordWrap(True)
        self.open_button = QPushButton("Open run folder…")
        self.open_button.setToolTip("Browse the checkpoints of a run folder (e.g. trained with the CLI)")
        self.open_button.clicked.connect(self._ask_run_folder)
        top.addWidget(self.run_label, 1)
        top.addWidget(self.open_button)
        layout.addLayout(top)

        self.slider = QSlider(Qt.Horizontal)
        self.slider.setTickPosition(QSlider.TicksBelow)
        self.slider.setPageStep(1)
        self.slider.valueChanged.connect(self._slider_moved)
        layout.addWidget(self.slider)

        info = QHBoxLayout()
        self.checkpoint_label = QLabel("")
        self.checkpoint_label.setWordWrap(True)  # a long figures line must not widen the dock
        self.status_label = QLabel("")
        self.status_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        info.addWidget(self.checkpoint_label, 1)
        info.addWidget(self.status_label)
        layout.addLayout(info)

        self.plots = SparklineGrid(columns=2)
        self.plots.plot("NMI to previous checkpoint", y_range=(0.0, 1.05))
        self.plots.plot("active clusters")
        self.plots.plot("usage entropy (normalised)", y_range=(0.0, 1.05))
        self.plots.plot("loss at checkpoint")
        self.plots.plot("spectral separation")
        for plot in self.plots.plots.values():
            plot.clicked.connect(self._plot_clicked)
        layout.addWidget(self.plots)

        self.use_button = QPushButton("Use this checkpoint")
        self.use_button.setToolTip(
            "Record this checkpoint as the run's chosen model: segmentation and export use it"
        )
        self.use_button.clicked.connect(self.use_current_checkpoint)
        layout.addWidget(self.use_button)

    def _update_enabled(self) -> None:
        has = bool(self.checkpoints)
        self.slider.setEnabled(has)
        self.use_button.setEnabled(has and self.review is not None)

    # ------------------------------------------------------------------ opening a run
    def _ask_run_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a DGC run folder")
        if folder:
            self.open_run(folder)

    def open_run(self, run_dir: str | Path, sources: Sequence[CubeSource] | None = None) -> bool:
        """Open a run folder and show its chosen (else latest) checkpoint.

        Parameters
        ----------
        run_dir : str or Path
            The run folder.
        sources : sequence of CubeSource, optional
            Cubes to segment. By default every cube layer of the viewer whose band count
            matches the run; if there is none, the run's training files are opened as layers.

        Returns
        -------
        bool
            Whether the run could be opened (otherwise a notification says why).
        """
        try:
            review = self._open_review(Path(run_dir), sources)
        except (DGCError, OSError) as error:
            show_error(error_message(error))
            return False
        self.attach(review, list(self.sources.values()), live=False)
        shown = self.chosen_checkpoint
        if shown is None:
            try:  # the selected start's latest, which need not be listed last
                latest = review.run.latest_checkpoint()
            except DGCError as error:
                show_error(error_message(error))
                latest = None
            shown = None if latest is None else latest.checkpoint_id
        ids = [info.checkpoint_id for info in self.checkpoints]
        if ids:
            self.slider.setValue(ids.index(shown) if shown in ids else len(ids) - 1)
            self._slider_moved(self.slider.value())  # also when the value did not change
        self._start_review_worker()
        self.run_opened.emit(str(review.path))
        return True

    def _open_review(self, run_dir: Path, sources: Sequence[CubeSource] | None) -> CheckpointReview:
        from napari_dgc.run_folder import RunDirectory

        run = RunDirectory.open(run_dir)
        if sources is None:
            sources = [
                cube_source(layer)
                for layer in self.viewer.layers
                if is_cube_layer(layer)
                and (is_reader_cube(layer) or "wavelengths" in layer.metadata)
                and layer.data.shape[0] == run.n_bands
            ]
        if not sources:
            sources = self._open_training_files(run)
        self.sources = {source.key: source for source in sources}
        return CheckpointReview(run.path, {key: s.cube for key, s in self.sources.items()})

    def _open_training_files(self, run) -> list[CubeSource]:
        """Open the run's training cubes that still exist as layers (reader layers)."""
        from napari_dgc._reader import cube_layer_data

        sources = []
        for file in run.dataset_files:
            if not Path(file).exists():
                continue  # e.g. an in-memory cube, or a file moved since training
            try:
                cube = open_cube(file)
            except DGCError as error:
                show_error(error_message(error))
                continue
            cube_data, cube_kwargs, _ = cube_layer_data(cube)[0]
            layer = self.viewer.add_image(cube_data, **cube_kwargs)
            sources.append(cube_source(layer))
        return sources

    # ------------------------------------------------------------------ live runs
    def attach(self, review: CheckpointReview, sources: Sequence[CubeSource], *, live: bool) -> None:
        """Show the checkpoints of ``review``'s run, segmenting ``sources`` (by key).

        ``live`` means a training worker is producing checkpoints (and their figures); the
        timeline then follows the newest checkpoint while its slider is at the end.
        """
        if self.review is not review:
            self._stop_review_worker()
            self.review = review
            self.figures = {}
            self._requests = queue.SimpleQueue()
        self.sources = {source.key: source for source in sources}
        self.live = live
        self.total_steps = review.run.config.steps
        self.total_run_steps = StartPlan.for_run(review.run.config).total_run_steps
        try:
            self.chosen_checkpoint = review.run.chosen_checkpoint
        except DGCError as error:
            show_error(error_message(error))
        self.run_label.setText(f"Run: {review.path}")
        self.run_label.setToolTip(str(review.path))
        self.refresh()

    def prepare_layers(self, sources: Sequence[CubeSource], run_dir: Path, n_clusters: int) -> None:
        """Create the (empty) cluster layers of ``sources`` now, before training starts."""
        for source in sources:
            self.labels_layers[source.key] = clusters_layer(
                self.viewer, source, run_dir=run_dir, n_clusters=n_clusters,
                layer=self.labels_layers.get(source.key),
            )

    def set_live(self, live: bool) -> None:
        """Mark whether training is producing checkpoints; when it stops, figures are filled in."""
        self.live = live
        if not live and self.review is not None:
            self.refresh()
            self._start_review_worker()

    def refresh(self) -> None:
        """Re-read the run's checkpoint list (a live run grows) and redraw."""
        if self.review is None:
            return
        try:
            self.checkpoints = self.review.checkpoints()
        except DGCError as error:
            show_error(error_message(error))
            return
        for info in self.checkpoints:
            figures = self.review.cached_figures(info.checkpoint_id)
            if figures is not None:
                self.figures[info.checkpoint_id] = figures
        following = self.slider.value() >= self.slider.maximum()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, len(self.checkpoints) - 1))
        if following and self.live:
            self.slider.setValue(self.slider.maximum())
        self.slider.blockSignals(False)
        self._update_enabled()
        self._update_plots()
        self._update_checkpoint_label()

    def add_segmented(self, result: CheckpointSegmented) -> None:
        """Take a checkpoint segmented by a worker: cache figures, show it if it is selected.

        During training the slider follows the newest checkpoint unless the user moved it back.
        """
        if result.review is not self.review:
            return  # a result of a run that is no longer shown
        if result.figures is not None:
            self.figures[result.checkpoint_id] = result.figures
        self.refresh()  # redraws the plots and the label with the new figures
        if self.current_checkpoint_id() == result.checkpoint_id:
            self._show_labels(result.checkpoint_id, result.labels)

    # ------------------------------------------------------------------ the slider
    def current_checkpoint_id(self) -> str | None:
        """Id of the checkpoint the slider is on."""
        if not self.checkpoints:
            return None
        return self.checkpoints[min(self.slider.value(), len(self.checkpoints) - 1)].checkpoint_id

    def select_checkpoint(self, checkpoint_id: str) -> None:
        """Move the slider to a checkpoint (shows it as if the user had moved the slider)."""
        ids = [info.checkpoint_id for info in self.checkpoints]
        self.slider.setValue(ids.index(checkpoint_id))

    def _plot_clicked(self, step: float) -> None:
        if self.checkpoints:
            nearest = min(range(len(self.checkpoints)),
                          key=lambda i: abs(self.checkpoints[i].run_step - step))
            self.slider.setValue(nearest)

    def _slider_moved(self, _value: int) -> None:
        checkpoint_id = self.current_checkpoint_id()
        if checkpoint_id is None or self.review is None:
            return
        self._update_checkpoint_label()
        self._update_plots()
        if not self.sources:
            self.status_label.setText(
                f"open a cube with {self.review.run.n_bands} bands to see its clusters"
            )
            return
        cached = self.review.cached_labels(checkpoint_id)
        if cached is not None:
            self._show_labels(checkpoint_id, cached)
            return
        self.status_label.setText(f"segmenting {checkpoint_id}…")
        self._requests.put(checkpoint_id)
        self._start_review_worker()

    def _show_labels(self, checkpoint_id: str, labels: dict) -> None:
        for key, label_map in labels.items():
            source = self.sources.get(key)
            if source is None or source.layer not in self.viewer.layers:
                continue  # the cube layer was removed meanwhile
            self.labels_layers[key] = show_clusters(
                self.viewer,
                source,
                label_map,
                run_dir=self.review.path,
                checkpoint_id=checkpoint_id,
                n_clusters=self.review.n_clusters,
                layer=self.labels_layers.get(key),
            )
        self.shown_checkpoint = checkpoint_id
        self.status_label.setText("")
        self.checkpoint_shown.emit(checkpoint_id)

    # ------------------------------------------------------------------ review worker
    def _start_review_worker(self) -> None:
        if self._review_worker is not None or self.review is None or not self.sources:
            return  # a running worker drains the queue before it returns
        if self.live and self._requests.empty():
            return  # the training worker computes figures while live
        self._review_worker = start_review_worker(
            {
                "yielded": self._on_review_result,
                "errored": self._on_review_error,
                "finished": self._on_review_finished,
            },
            self.review,
            self._requests,
            sweep=not self.live,
        )

    def _stop_review_worker(self) -> None:
        if self._review_worker is not None:
            self._review_worker.quit()
            self._review_worker = None

    def _on_review_result(self, result) -> None:
        if isinstance(result, CheckpointSegmented):
            if result.review is self.review and result.checkpoint_id == self.current_checkpoint_id():
                self._show_labels(result.checkpoint_id, result.labels)
        elif isinstance(result, FiguresComputed):
            self.figures[result.figures.checkpoint_id] = result.figures
            self._update_plots()
            self._update_checkpoint_label()

    def _on_review_error(self, error: BaseException) -> None:
        self.status_label.setText("")
        show_error(error_message(error))

    def _on_review_finished(self) -> None:
        self._review_worker = None
        if not self._requests.empty():
            self._start_review_worker()

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop the review worker and wait for it (used when napari closes)."""
        worker = self._review_worker
        self._stop_review_worker()
        if worker is not None:
            worker.done.wait(timeout_s)

    # ------------------------------------------------------------------ choosing
    def use_current_checkpoint(self) -> None:
        """Record the checkpoint on the slider as the run's chosen checkpoint."""
        checkpoint_id = self.current_checkpoint_id()
        if checkpoint_id is None or self.review is None:
            return
        try:
            self.review.run.choose(checkpoint_id)
        except (DGCError, OSError) as error:
            show_error(error_message(error))
            return
        self.chosen_checkpoint = checkpoint_id
        show_info(f"Checkpoint {checkpoint_id} is now the chosen model of {self.review.path.name}")
        self._update_checkpoint_label()
        self._update_plots()
        self.checkpoint_chosen.emit(checkpoint_id)

    # ------------------------------------------------------------------ drawing
    def _update_checkpoint_label(self) -> None:
        checkpoint_id = self.current_checkpoint_id()
        if checkpoint_id is None:
            self.checkpoint_label.setText("no checkpoint yet")
            return
        index = min(self.slider.value(), len(self.checkpoints) - 1)
        info = self.checkpoints[index]
        if self.total_run_steps != self.total_steps:  # several starts
            where = f"start {info.start + 1}, step {info.step}; run step {info.run_step}/{self.total_run_steps}"
        else:
            where = f"step {info.step}/{self.total_steps}"
        text = f"{checkpoint_id}  ({index + 1}/{len(self.checkpoints)}, {where})"
        if checkpoint_id == self.chosen_checkpoint:
            text += "  ★ chosen"
        figures = self.figures.get(checkpoint_id)
        if figures is not None:
            nmi = "–" if figures.nmi_to_previous is None else f"{figures.nmi_to_previous:.2f}"
            text += f"\nNMI to previous {nmi} · active {figures.active_clusters} · entropy {figures.usage_entropy:.2f}"
            if figures.spectral_separation is not None:
                text += f" · separation {short_number(figures.spectral_separation)}"
        self.checkpoint_label.setText(text)

    def _update_plots(self) -> None:
        starts = sorted({info.start for info in self.checkpoints})

        def series(name: str, getter) -> list[tuple[str, list[int], list]]:
            """One series per start (each its own colour), x = the run step."""
            result = []
            for start in starts:
                infos = [info for info in self.checkpoints if info.start == start]
                values = [getter(info) for info in infos]
                label = f"start {start + 1}" if len(starts) > 1 else name
                result.append((label, [info.run_step for info in infos], values))
            return result

        def figure(getter):
            return lambda info: (getter(self.figures[info.checkpoint_id])
                                 if info.checkpoint_id in self.figures else None)

        self.plots.plot("NMI to previous checkpoint").set_series(
            series("NMI", figure(lambda f: f.nmi_to_previous)), points=True
        )
        self.plots.plot("active clusters").set_series(
            series("active", figure(lambda f: f.active_clusters)), points=True
        )
        self.plots.plot("usage entropy (normalised)").set_series(
            series("entropy", figure(lambda f: f.usage_entropy)), points=True
        )
        self.plots.plot("spectral separation").set_series(
            series("separation", figure(lambda f: f.spectral_separation)), points=True
        )
        self.plots.plot("loss at checkpoint").set_series(
            series("total", lambda info: recorded_losses(info).get("total")), points=True
        )
        markers = []
        current = self.current_checkpoint_id()
        chosen = self.chosen_checkpoint
        for info in self.checkpoints:
            if info.checkpoint_id == chosen:
                markers.append((info.run_step, CHOSEN_MARKER, "solid"))
            if info.checkpoint_id == current:
                markers.append((info.run_step, CURRENT_MARKER, "dash"))
        last = self.checkpoints[-1].run_step if self.checkpoints else 1
        for plot in self.plots.plots.values():
            plot.set_x_range(0, max(self.total_run_steps, last))
            plot.set_markers(markers)
