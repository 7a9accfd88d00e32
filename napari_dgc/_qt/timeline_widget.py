"""The checkpoint timeline: browse a run's checkpoints and choose where training should stop.

A view of a :class:`~napari_dgc.state.review.ReviewModel`. A slider runs over every checkpoint
of the run, growing while the run trains. Moving it makes that checkpoint current: its cluster
maps are shown on the "DGC clusters" Labels layers (segmented in a background worker and
cached) and it is marked on small plots of the checkpoint figures (NMI to the previous
checkpoint, clusters active in the cubes, usage entropy, losses, spectral separation), so the
window in which meaningful clusters "ignite" can be seen and picked. "Use this checkpoint"
records the choice in the run's ``run.json``; segmentation and export then use that model.

The widget is embedded in the "DGC: Train" panel (sharing the panel's model) and is also its
own dock widget ("DGC: Checkpoints") to open a run folder later, including CLI runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import napari
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.errors import DGCError
from napari_dgc.inference.checkpoint_review import ACTIVE_MIN_FRACTION
from napari_dgc.io import open_cube
from napari_dgc.io.preparation import Preparation
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.preparation_file import run_preparation
from napari_dgc.state.review import ReviewModel
from napari_dgc.state.training import error_message

from .band_wavelength import follow_band_wavelength
from .cube_layers import (
    CubeSource,
    clusters_layer,
    cube_source,
    is_cube_layer,
    is_reader_cube,
    show_clusters,
    warm_up_labels,
)
from .plots import SparklineGrid
from .project_view import ProjectView
from .workers import CheckpointSegmented, FiguresComputed, call_on_window_close, start_review_worker

__all__ = ["CHOSEN_MARKER", "CURRENT_MARKER", "RECOMMENDED_MARKER", "TimelineWidget", "error_message"]

CURRENT_MARKER = None  # the plots' neutral colour
CHOSEN_MARKER = "#ffd700"
RECOMMENDED_MARKER = "#3cb371"

#: The timeline's plots: title → (fixed y range, tooltip).
PLOTS = {
    "NMI to previous checkpoint": (
        (0.0, 1.05),
        "NMI between this checkpoint's cluster maps and the "
        "previous checkpoint's of the same start (1: unchanged)",
    ),
    "active in cubes": (
        None,
        f"Clusters holding more than {ACTIVE_MIN_FRACTION:.1%} of the reviewed "
        "cubes' pixels at the checkpoint (the loss panel's 'active in step' counts a "
        "training step instead)",
    ),
    "usage entropy (normalised)": ((0.0, 1.05), "Entropy of the cluster sizes / log K (1: equal sizes)"),
    "loss at checkpoint": (None, "Total loss recorded with the checkpoint"),
    "spectral separation": (None, "Calinski–Harabasz index of the clusters on the normalised spectra"),
}


def _prepared_bands(layer, preparation: Preparation) -> int | None:
    """Bands of a cube layer once prepared as a run's cubes are (None: it cannot be).

    A reader layer is prepared on its lazy cube (nothing is read); another layer's band count
    is only known without a band crop.
    """
    if not is_reader_cube(layer):
        cropped = preparation.bands_nm is not None or preparation.band_indices is not None
        return None if cropped else layer.data.shape[0]
    try:
        return preparation.apply(cube_source(layer).cube).n_bands
    except DGCError:
        return None


class TimelineWidget(QWidget):
    """Slider over the checkpoints of one run, with figure plots and "Use this checkpoint".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose cube layers are segmented and whose Labels layers are updated.
    model : ReviewModel, optional
        The review shown (the train panel passes its own); a new one by default.

    Signals
    -------
    checkpoint_shown(str)
        A checkpoint's cluster maps are now on the Labels layers (its id).
    checkpoint_chosen(str)
        "Use this checkpoint" recorded this id in the run.
    """

    checkpoint_shown = Signal(str)
    checkpoint_chosen = Signal(str)

    def __init__(
        self, napari_viewer: napari.Viewer, model: ReviewModel | None = None, parent: QWidget | None = None
    ):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model = ReviewModel() if model is None else model
        self.labels_layers: dict[str, Labels] = {}
        self.shown_checkpoint: str | None = None
        self._review_worker = None
        self._build()
        #: "Save project…" / "Open project…" in the panel docked alone (not inside the train panel).
        self.project_view: ProjectView | None = None
        if model is None:
            self.project_view = ProjectView(self.viewer, self)
            self.bottom_row.addWidget(self.project_view)
            self.layout().addWidget(self.project_view.status_label)
        model = self.model
        model.run_changed.connect(self._on_run_changed)
        model.checkpoints_changed.connect(self._render)
        model.current_changed.connect(self._on_current_changed)
        model.labels_ready.connect(self._show_labels)
        model.segmentation_requested.connect(self._on_segmentation_requested)
        model.sweep_requested.connect(self._start_review_worker)
        # Looked up when called, so the notifications can be replaced (tests).
        model.message.connect(lambda text: show_info(text))
        model.error.connect(lambda text: show_error(text))
        self._render()
        call_on_window_close(self, self.shutdown)
        warm_up_labels()  # the first cluster layer then appears without freezing napari
        follow_band_wavelength(self.viewer)  # the band slider gives only an index

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)  # docked alone, the button must not touch the edge
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
        for title, (y_range, tooltip) in PLOTS.items():
            plot = self.plots.plot(title, y_range=y_range, tooltip=tooltip)
            plot.clicked.connect(self.model.select_nearest)
        layout.addWidget(self.plots)

        self.use_button = QPushButton("Use this checkpoint")
        self.use_button.setToolTip(
            "Record this checkpoint as the run's chosen model: segmentation and export use it"
        )
        self.use_button.clicked.connect(self.use_current_checkpoint)
        #: The row of "Use this checkpoint"; the project buttons join it (no extra height).
        self.bottom_row = QHBoxLayout()
        self.bottom_row.addWidget(self.use_button)
        layout.addLayout(self.bottom_row)

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
            run = RunDirectory.open(run_dir)
            if sources is None:
                preparation = run_preparation(run)
                sources = [
                    cube_source(layer)
                    for layer in self.viewer.layers
                    if is_cube_layer(layer)
                    and (is_reader_cube(layer) or "wavelengths" in layer.metadata)
                    and _prepared_bands(layer, preparation) == run.n_bands
                ] or self._open_training_files(run)
            self.model.open_run(run.path, sources)
        except (DGCError, OSError) as error:
            show_error(error_message(error))
            return False
        return True

    def _open_training_files(self, run: RunDirectory) -> list[CubeSource]:
        """Open the run's training cubes that still exist as layers (reader layers), as
        training opened them (a MATLAB cube's ``key`` and ``shape``).
        """
        from napari_dgc._reader import cube_layer_data

        sources = []
        for file, options in zip(run.dataset_files, run.dataset_open_options):
            if not Path(file).exists():
                continue  # e.g. an in-memory cube, or a file moved since training
            try:
                cube = open_cube(file, **options)
            except DGCError as error:
                show_error(error_message(error))
                continue
            cube_data, cube_kwargs, _ = cube_layer_data(cube)[0]
            sources.append(cube_source(self.viewer.add_image(cube_data, **cube_kwargs)))
        return sources

    # ------------------------------------------------------------------ model changes
    def _on_run_changed(self, path) -> None:
        self._stop_review_worker()  # it works on the previous review
        self.run_label.setText(f"Run: {path}")
        self.run_label.setToolTip(str(path))
        if self.model.live:
            # Creating a Labels layer blocks the GUI ~0.5 s: do it now, before training starts.
            for key, source in self.model.sources.items():
                self.labels_layers[key] = clusters_layer(
                    self.viewer,
                    source,
                    run_dir=path,
                    n_clusters=self.model.n_clusters,
                    layer=self.labels_layers.get(key),
                )

    def _render(self) -> None:
        """Slider range and position, plots and label from the model."""
        ids = self.model.checkpoint_ids()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, len(ids) - 1))
        if self.model.current in ids:
            self.slider.setValue(ids.index(self.model.current))
        self.slider.blockSignals(False)
        self.slider.setEnabled(bool(ids))
        self.use_button.setEnabled(bool(ids) and self.model.review is not None)
        if not ids and not self.model.live:
            self._drop_empty_layers()
        self._update_plots()
        self.checkpoint_label.setText(self.model.describe_current())

    def _drop_empty_layers(self) -> None:
        """Remove the cluster layers made for a training that ended before its first checkpoint
        (it failed or was stopped at once): they never showed anything.
        """
        for key, layer in list(self.labels_layers.items()):
            if layer.metadata.get(layer_keys.CHECKPOINT) is None:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
                del self.labels_layers[key]

    def _on_current_changed(self, _checkpoint_id) -> None:
        self._render()
        if not self.model.sources and self.model.review is not None:
            bands = self.model.review.run.n_bands
            self.status_label.setText(f"open a cube with {bands} bands to see its clusters")

    def _on_segmentation_requested(self, checkpoint_id: str) -> None:
        self.status_label.setText(f"segmenting {checkpoint_id}…")
        self._start_review_worker()

    def _slider_moved(self, index: int) -> None:
        ids = self.model.checkpoint_ids()
        if ids:
            self.model.select(ids[min(index, len(ids) - 1)])

    def _show_labels(self, checkpoint_id: str, labels: dict) -> None:
        model = self.model
        for key, label_map in labels.items():
            source = model.sources.get(key)
            if source is None or source.layer not in self.viewer.layers:
                continue  # the cube layer was removed meanwhile
            self.labels_layers[key] = show_clusters(
                self.viewer,
                source,
                label_map,
                run_dir=model.run_path,
                checkpoint_id=checkpoint_id,
                n_clusters=model.n_clusters,
                layer=self.labels_layers.get(key),
                binning=model.binning,
            )
        self.shown_checkpoint = checkpoint_id
        self.status_label.setText("")
        self.checkpoint_shown.emit(checkpoint_id)

    # ------------------------------------------------------------------ scripting
    def current_checkpoint_id(self) -> str | None:
        """Id of the current checkpoint (the slider's)."""
        return self.model.current

    def select_checkpoint(self, checkpoint_id: str) -> None:
        """Make a checkpoint current (shows it as if the user had moved the slider)."""
        self.model.select(checkpoint_id)

    def use_current_checkpoint(self) -> None:
        """Record the current checkpoint as the run's chosen checkpoint."""
        try:
            self.model.choose_current()
        except (DGCError, OSError) as error:
            show_error(error_message(error))
            return
        if self.model.chosen is not None:
            self.checkpoint_chosen.emit(self.model.chosen)

    # ------------------------------------------------------------------ review worker
    def _start_review_worker(self) -> None:
        model = self.model
        if self._review_worker is not None or model.review is None or not model.sources:
            return  # a running worker drains the queue before it returns
        if model.live and model.requests.empty():
            return  # the training worker computes figures while live
        self._review_worker = start_review_worker(
            {
                "yielded": self._on_review_result,
                "errored": self._on_review_error,
                "finished": self._on_review_finished,
            },
            model.review,
            model.requests,
            sweep=not model.live,
        )

    def _stop_review_worker(self) -> None:
        if self._review_worker is not None:
            self._review_worker.quit()
            self._review_worker = None

    def _on_review_result(self, result) -> None:
        if isinstance(result, CheckpointSegmented):
            self.model.labels_computed(result.run_dir, result.checkpoint_id, result.labels)
        elif isinstance(result, FiguresComputed):
            self.model.figures_computed(result.run_dir, result.figures)

    def _on_review_error(self, error: BaseException) -> None:
        self.status_label.setText("")
        show_error(error_message(error))

    def _on_review_finished(self) -> None:
        if self._review_worker is not None and self._review_worker.done.is_set():
            self._review_worker = None  # not a newer worker started since
        if not self.model.requests.empty():
            self._start_review_worker()

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop the review worker and wait for it (used when napari closes)."""
        worker = self._review_worker
        self._stop_review_worker()
        if worker is not None:
            worker.done.wait(timeout_s)

    # ------------------------------------------------------------------ drawing
    def _update_plots(self) -> None:
        model = self.model
        current, chosen, recommended = model.marker_steps()
        styles = ((recommended, RECOMMENDED_MARKER, "dot"), (chosen, CHOSEN_MARKER, "solid"))
        markers = [marker for marker in styles if marker[0] is not None] + (
            [(current, CURRENT_MARKER, "dash")] if current is not None else []
        )
        last = model.checkpoints[-1].run_step if model.checkpoints else 1
        for title, plot in self.plots.plots.items():
            plot.set_series(model.figure_series(title), points=True)
            plot.set_x_range(0, max(model.total_run_steps, last))
            plot.set_markers(markers)
