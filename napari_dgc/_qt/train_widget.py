"""The "DGC: Train" panel: train DGC on cube layers and watch it learn.

Training runs :func:`napari_dgc.training.loop.train` in a background worker. The GUI thread only
records progress events (plots are redrawn by a 10 Hz timer) and assigns the label maps the
worker computed at each checkpoint to the "DGC clusters" layer of the cube they belong to.
The embedded :class:`~napari_dgc._qt.timeline_widget.TimelineWidget` browses the checkpoints.

Buttons: **Start** a new run; **Pause**/**Resume** a running training (the worker stops
pulling events); **Resume** also continues a stopped or opened run from its latest
checkpoint; **Stop** closes the training generator, which leaves the run folder consistent.
"""

from __future__ import annotations

import gc
import logging
import traceback
from datetime import datetime
from pathlib import Path

import napari
import torch
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEventLoop, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_dgc.errors import DGCError
from napari_dgc.run_folder import RunDirectory
from napari_dgc.config import RESUMABLE_SETTINGS, StartPlan, TrainConfig, get_setting, resumed_config
from napari_dgc.training.events import CheckpointEvent, FinishedEvent, ProgressEvent, StartSelectedEvent

from .collapsible import CollapsibleSection
from .cube_layers import CubeSource, cube_source, is_cube_layer, is_reader_cube
from .plots import SparklineGrid
from .timeline_widget import TimelineWidget, error_message
from .train_state import TrainingHistory, TrainState, TrainStatus
from .workers import CheckpointSegmented, call_on_window_close, start_training_worker

logger = logging.getLogger(__name__)

#: Parent folder of automatically named run folders.
DEFAULT_RUNS_ROOT = Path.home() / "napari-dgc-runs"

#: Plots and the progress bar are redrawn at most this often (milliseconds).
REDRAW_INTERVAL_MS = 100

_LOSS_WEIGHTS = (
    ("weight_compact", "compactness"),
    ("weight_orth", "orthogonality"),
    ("weight_balance", "balance"),
    ("weight_uniform", "uniform assignment"),
    ("weight_consistency", "consistency"),
    ("weight_fidelity", "spectral fidelity"),
)


class ScientificSpinBox(QDoubleSpinBox):
    """A spin box that shows and accepts values like ``1e-4`` (learning rates, loss weights)."""

    def __init__(self, minimum: float, maximum: float, parent=None):
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(minimum, maximum)

    def textFromValue(self, value: float) -> str:
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:
        return float(text)

    def validate(self, text: str, position: int):
        from qtpy.QtGui import QValidator

        try:
            value = float(text)
        except ValueError:
            return QValidator.Intermediate, text, position
        if self.minimum() <= value <= self.maximum():
            return QValidator.Acceptable, text, position
        return QValidator.Intermediate, text, position

    def stepBy(self, steps: int) -> None:
        # Multiply/divide by ~2 per step: additive steps make no sense across decades.
        self.setValue(self.value() * (2.0 ** steps))


def available_devices() -> list[str]:
    """Devices offered in the panel: "auto", "cpu" and, when usable, "cuda"."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def default_run_folder() -> Path:
    """A new, time-stamped run folder under :data:`DEFAULT_RUNS_ROOT`."""
    return DEFAULT_RUNS_ROOT / datetime.now().strftime("%Y%m%d-%H%M%S")


class TrainWidget(QWidget):
    """Dock widget to train DGC on cube layers and browse the checkpoints as they arrive.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose cube layers are trained on.

    Notes
    -----
    Scripted use (the demo): set fields with :meth:`set_config`, :attr:`run_folder_edit`
    and :meth:`select_layers`, then call :meth:`start_training`.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = TrainState()
        self.worker = None
        self.run_dir: Path | None = None
        self.sources: list[CubeSource] = []
        self._plots_dirty = False
        self._build()
        self.set_config(TrainConfig())
        self.refresh_layers()
        self.state.status_changed.connect(self._on_status_changed)
        self._on_status_changed(self.state.status)

        layers = self.viewer.layers.events
        layers.inserted.connect(self.refresh_layers)
        layers.removed.connect(self.refresh_layers)
        layers.moved.connect(self.refresh_layers)

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self._redraw_timer.timeout.connect(self._redraw)
        self._redraw_timer.start()

        call_on_window_close(self.viewer, self.shutdown, self)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        layout = QVBoxLayout(body)

        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        settings_layout.addWidget(self._build_cube_box())
        settings_layout.addWidget(self._build_training_box())
        self.settings_section = CollapsibleSection("Settings", settings, expanded=True)
        layout.addWidget(self.settings_section)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.start_button.setToolTip("Train a new run on the ticked cube layers")
        self.resume_button.setToolTip(
            "Continue a paused training, or a stopped/opened run from its latest checkpoint"
        )
        self.stop_button.setToolTip("Stop training; checkpoints written so far stay usable")
        self.start_button.clicked.connect(self.start_training)
        self.pause_button.clicked.connect(self.pause_training)
        self.resume_button.clicked.connect(self.resume_training)
        self.stop_button.clicked.connect(self.stop_training)
        for button in (self.start_button, self.pause_button, self.resume_button, self.stop_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("step %v / %m")
        self.progress_label = QLabel("idle")
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)

        self.loss_plots = SparklineGrid(columns=3)
        layout.addWidget(CollapsibleSection("Losses and active clusters", self.loss_plots))

        self.timeline = TimelineWidget(self.viewer)
        self.timeline.run_opened.connect(self._on_run_opened)
        layout.addWidget(CollapsibleSection("Checkpoints", self.timeline))
        layout.addStretch(1)

    def _build_cube_box(self) -> QGroupBox:
        cubes = QGroupBox("Cube layers to train on")
        cubes_layout = QVBoxLayout(cubes)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(72)
        self.layer_list.itemChanged.connect(lambda _item: self._on_status_changed(self.state.status))
        cubes_layout.addWidget(self.layer_list)
        axis_row = QHBoxLayout()
        axis_row.addWidget(QLabel("Band axis of other image layers:"))
        self.band_axis_combo = QComboBox()
        self.band_axis_combo.addItem("first (bands, rows, cols)", 0)
        self.band_axis_combo.addItem("last (rows, cols, bands)", 2)
        self.band_axis_combo.setToolTip(
            "Layers opened by the napari-dgc reader are band-first; for any other 3-D image "
            "layer, confirm where its bands are before ticking it"
        )
        axis_row.addWidget(self.band_axis_combo)
        cubes_layout.addLayout(axis_row)
        return cubes

    def _build_training_box(self) -> QGroupBox:
        settings = QGroupBox("Training")
        form = QFormLayout(settings)
        self.n_clusters_spin = QSpinBox()
        self.n_clusters_spin.setRange(2, 64)
        self.n_clusters_spin.setToolTip("K: the number of clusters DGC learns (entity types)")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10_000_000)
        self.restarts_spin = QSpinBox()
        self.restarts_spin.setRange(1, 100)
        self.restarts_spin.setToolTip(
            "Starts from other random weights, each trained 'steps per start' steps in turn; the "
            "one whose clusters separate the spectra best continues. 1: a single start")
        self.restart_steps_spin = QSpinBox()
        self.restart_steps_spin.setRange(1, 10_000_000)
        self.checkpoint_every_spin = QSpinBox()
        self.checkpoint_every_spin.setRange(1, 10_000_000)
        self.crop_size_spin = QSpinBox()
        self.crop_size_spin.setRange(4, 4096)
        self.learning_rate_spin = ScientificSpinBox(1e-9, 10.0)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        run_row = QHBoxLayout()
        self.run_folder_edit = QLineEdit()
        self.run_folder_edit.setPlaceholderText(f"automatic: {DEFAULT_RUNS_ROOT}/<date-time>")
        browse = QPushButton("…")
        browse.setToolTip("Choose the folder of the new run")
        browse.clicked.connect(self._browse_run_folder)
        run_row.addWidget(self.run_folder_edit, 1)
        run_row.addWidget(browse)
        form.addRow("Clusters (K)", self.n_clusters_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Starts", self.restarts_spin)
        form.addRow("Checkpoint every", self.checkpoint_every_spin)
        form.addRow("Crop size (px)", self.crop_size_spin)
        form.addRow("Learning rate", self.learning_rate_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Run folder", run_row)

        advanced = QWidget()
        advanced_form = QFormLayout(advanced)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        self.batch_size_spin = QSpinBox()
        self.batch_size_spin.setRange(1, 1024)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        advanced_form.addRow("Batch size (crop pairs)", self.batch_size_spin)
        advanced_form.addRow("Seed", self.seed_spin)
        advanced_form.addRow("Steps per start", self.restart_steps_spin)
        self.weight_spins: dict[str, ScientificSpinBox] = {}
        for field_name, label in _LOSS_WEIGHTS:
            spin = ScientificSpinBox(0.0, 1e6)
            self.weight_spins[field_name] = spin
            advanced_form.addRow(f"Weight: {label}", spin)
        self.advanced_section = CollapsibleSection("Advanced options", advanced, expanded=False)
        form.addRow(self.advanced_section)
        return settings

    def _browse_run_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of the new run")
        if folder:
            self.run_folder_edit.setText(folder)

    # ------------------------------------------------------------------ cube layers
    def refresh_layers(self, *_event) -> None:
        """Re-list the viewer's cube layers, keeping the user's ticks."""
        ticked = {
            self.layer_list.item(i).data(Qt.UserRole): self.layer_list.item(i).checkState()
            for i in range(self.layer_list.count())
        }
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if not is_cube_layer(layer):
                continue
            key = str(layer.unique_id)
            known_cube = is_reader_cube(layer) or "wavelengths" in layer.metadata
            text = layer.name if known_cube else f"{layer.name}  (band axis: see below)"
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            default = Qt.Checked if known_cube else Qt.Unchecked
            item.setCheckState(ticked.get(key, default))
            self.layer_list.addItem(item)
        self.layer_list.blockSignals(False)
        self._on_status_changed(self.state.status)

    def select_layers(self, names: list[str]) -> None:
        """Tick exactly the cube layers called ``names`` (for scripts and the demo)."""
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            layer = self._layer_by_key(item.data(Qt.UserRole))
            item.setCheckState(Qt.Checked if layer is not None and layer.name in names else Qt.Unchecked)

    def _layer_by_key(self, key: str):
        return next((layer for layer in self.viewer.layers if str(layer.unique_id) == key), None)

    def ticked_sources(self) -> list[CubeSource]:
        """The ticked cube layers captured for the engine (their data read now)."""
        band_axis = self.band_axis_combo.currentData()
        sources = []
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            layer = self._layer_by_key(item.data(Qt.UserRole))
            if item.checkState() == Qt.Checked and layer is not None:
                sources.append(cube_source(layer, band_axis))
        return sources

    # ------------------------------------------------------------------ settings
    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` the panel's fields describe (defaults elsewhere)."""
        return TrainConfig().with_settings({
            "model.n_clusters": self.n_clusters_spin.value(),
            "steps": self.steps_spin.value(),
            "starts.count": self.restarts_spin.value(),
            "starts.steps": self.restart_steps_spin.value(),
            "checkpoint_every": self.checkpoint_every_spin.value(),
            "data.crop_size": self.crop_size_spin.value(),
            "data.batch_size": self.batch_size_spin.value(),
            "optim.learning_rate": self.learning_rate_spin.value(),
            "seed": self.seed_spin.value(),
            "device": self.device_combo.currentText(),
            **{f"losses.{name}": spin.value() for name, spin in self.weight_spins.items()},
        })

    def set_config(self, config: TrainConfig) -> None:
        """Show ``config`` in the panel's fields."""
        self.n_clusters_spin.setValue(config.model.n_clusters)
        self.steps_spin.setValue(config.steps)
        self.restarts_spin.setValue(config.starts.count)
        self.restart_steps_spin.setValue(config.starts.steps)
        self.checkpoint_every_spin.setValue(config.checkpoint_every)
        self.crop_size_spin.setValue(config.data.crop_size)
        self.batch_size_spin.setValue(config.data.batch_size)
        self.learning_rate_spin.setValue(config.optim.learning_rate)
        self.seed_spin.setValue(config.seed)
        index = self.device_combo.findText(config.device)
        self.device_combo.setCurrentIndex(max(index, 0))
        for name, spin in self.weight_spins.items():
            spin.setValue(getattr(config.losses, name))

    # ------------------------------------------------------------------ controls
    def start_training(self) -> bool:
        """Start a new run on the ticked cube layers.

        Returns
        -------
        bool
            Whether a worker was started (otherwise a notification says why).
        """
        if self.state.status is not TrainStatus.IDLE:
            return False
        text = self.run_folder_edit.text().strip()
        return self._launch(Path(text).expanduser() if text else default_run_folder(), resume=False)

    def resume_training(self) -> bool:
        """Resume a paused worker, or continue :attr:`run_dir` from its latest checkpoint."""
        if self.state.status is TrainStatus.PAUSED and self.worker is not None:
            self.worker.resume()
            self.state.status = TrainStatus.RUNNING
            return True
        if self.state.status is TrainStatus.IDLE and self.run_dir is not None:
            return self._launch(self.run_dir, resume=True)
        return False

    def pause_training(self) -> None:
        """Stop pulling training events until :meth:`resume_training`."""
        if self.state.status is TrainStatus.RUNNING and self.worker is not None:
            self.worker.pause()
            self.state.status = TrainStatus.PAUSED

    def stop_training(self) -> None:
        """Stop the training; the run keeps every checkpoint written so far."""
        if self.worker is not None and self.state.status in (TrainStatus.RUNNING, TrainStatus.PAUSED):
            self.worker.quit()
            self.state.status = TrainStatus.STOPPING

    def _launch(self, run_dir: Path, *, resume: bool) -> bool:
        try:
            config = self.train_config()
            if resume:  # the run's own settings, with the changes a resume may make
                config = resumed_config(RunDirectory.open(run_dir).config, {
                    key: get_setting(config, key) for key in RESUMABLE_SETTINGS})
            sources = self.ticked_sources()
        except (DGCError, ValueError) as error:
            show_error(error_message(error))
            return False
        if not sources:
            show_error("Tick at least one cube layer to train on")
            return False
        self.sources = sources
        self.run_dir = run_dir
        self.state.history = TrainingHistory()
        self.loss_plots.clear()
        self.progress_bar.setRange(0, StartPlan.for_run(config).total_run_steps)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("step %v / %m")
        self.progress_label.setText("starting…")
        # Creating a Labels layer blocks the GUI ~0.5 s: do it now, not mid-training.
        self.timeline.prepare_layers(sources, run_dir, config.model.n_clusters)
        self.settings_section.set_expanded(False)  # make room for the plots and the timeline
        # Paint the new layer and the folded settings now, before the worker competes for the
        # GIL and the CPU: painted alongside the worker's start-up, this first frame froze the
        # GUI for 200-250 ms. User input waits, so Start cannot be re-entered meanwhile.
        QApplication.processEvents(QEventLoop.ExcludeUserInputEvents)
        review = self.timeline.review
        same_run = review is not None and resume and review.path.resolve() == run_dir.resolve()
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
            },
            [source.cube for source in sources],
            config,
            run_dir,
            resume=resume,
            review_cubes={source.key: source.cube for source in sources},
            review=review if same_run else None,
        )
        if same_run:
            self.timeline.attach(review, sources, live=True)
        self.state.status = TrainStatus.RUNNING
        return True

    # ------------------------------------------------------------------ worker events
    def _on_event(self, event) -> None:
        if isinstance(event, ProgressEvent):
            if self.state.history.latest is None:
                # Building the optimiser imported torch._dynamo (~800 modules, ~100 000
                # objects) in the worker the first time: freeze those too.
                gc.freeze()
            self.state.history.add(event)
            self._plots_dirty = True
        elif isinstance(event, CheckpointSegmented):
            if self.timeline.review is not event.review:
                self.timeline.attach(event.review, self.sources, live=True)
            self.timeline.add_segmented(event)
        elif isinstance(event, CheckpointEvent):
            self.run_dir = Path(event.run_dir)
        elif isinstance(event, StartSelectedEvent):
            scores = ", ".join(f"{value:,.0f}" for value in event.separations)
            show_info(f"Start {event.start + 1} of {len(event.separations)} continues: its clusters "
                      f"separate the spectra best (Calinski–Harabasz per start: {scores})")
        elif isinstance(event, FinishedEvent):
            show_info(f"Training finished after {event.step} steps: {event.run_dir}")

    def _on_error(self, error: BaseException) -> None:
        logger.error("training failed:\n%s", "".join(traceback.format_exception(error)))
        show_error(f"Training stopped: {error_message(error)}")

    def _on_finished(self) -> None:
        self.worker = None
        gc.unfreeze()  # objects from before the Start click are collectable again
        self.state.status = TrainStatus.IDLE
        self._redraw()
        self.timeline.set_live(False)

    def _on_run_opened(self, path: str) -> None:
        """A run opened in the timeline becomes the run that Resume continues."""
        if self.state.status is not TrainStatus.IDLE:
            return
        self.run_dir = Path(path)
        try:
            self.set_config(RunDirectory.open(path).config)
        except DGCError as error:
            show_error(error_message(error))
        self._on_status_changed(self.state.status)

    def _on_status_changed(self, status: TrainStatus) -> None:
        idle = status is TrainStatus.IDLE
        any_ticked = any(
            self.layer_list.item(i).checkState() == Qt.Checked for i in range(self.layer_list.count())
        )
        self.start_button.setEnabled(idle and any_ticked)
        self.pause_button.setEnabled(status is TrainStatus.RUNNING)
        self.resume_button.setEnabled(
            status is TrainStatus.PAUSED or (idle and any_ticked and self.run_dir is not None)
        )
        self.stop_button.setEnabled(status in (TrainStatus.RUNNING, TrainStatus.PAUSED))
        self.layer_list.setEnabled(idle)
        if status is not TrainStatus.RUNNING:
            self.progress_label.setText(status.value if idle else f"{status.value}…")

    # ------------------------------------------------------------------ drawing
    def _redraw(self) -> None:
        """Progress bar, ETA and loss plots from the history (called by a 10 Hz timer)."""
        if not self._plots_dirty:
            return
        self._plots_dirty = False
        history = self.state.history
        event = history.latest
        if event is None:
            return
        # QProgressBar.setValue repaints at once, outside the coalesced repaint of the plots:
        # with updates disabled it only stores the value, and re-enabling schedules a repaint.
        self.progress_bar.setUpdatesEnabled(False)
        self.progress_bar.setMaximum(event.run_total_steps)
        self.progress_bar.setValue(event.run_step)
        if event.run_total_steps != event.total_steps:  # several starts
            self.progress_bar.setFormat(f"step %v / %m · start {event.start + 1}, its step {event.step}")
        self.progress_bar.setUpdatesEnabled(True)
        if self.state.status is TrainStatus.RUNNING:
            eta = history.eta_seconds()
            rate = history.steps_per_second()
            parts = [f"ETA {_format_duration(eta)}" if eta is not None else "ETA …"]
            if rate is not None:
                parts.append(f"{rate:.2f} steps/s")
            parts.append(f"active clusters {event.active_clusters}")
            self.progress_label.setText(" · ".join(parts))
        for name, values in history.losses.items():
            plot = self.loss_plots.plot(name)
            plot.set_series([(name, history.steps, values)])
            plot.set_x_range(0, event.run_total_steps)
        active = self.loss_plots.plot("active clusters")
        active.set_series([("active", history.steps, history.active_clusters)])
        active.set_x_range(0, event.run_total_steps)

    # ------------------------------------------------------------------ closing
    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop the workers and wait for them (napari is closing)."""
        self._redraw_timer.stop()
        worker = self.worker
        if worker is not None:
            worker.quit()
            # The current step or checkpoint finishes, then the engine closes cleanly.
            if not worker.done.wait(timeout_s):
                logger.warning("training worker did not stop within %.0f s", timeout_s)
            gc.unfreeze()  # the worker's "finished" may never be delivered now
        self.timeline.shutdown()


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
