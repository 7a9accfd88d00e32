"""The "DGC: Train" panel: train DGC on cube layers and watch it learn.

The panel is a view of two models: a :class:`~napari_dgc.state.training.TrainingSession`
(status, run, progress, loss history) and a :class:`~napari_dgc.state.review.ReviewModel` (the
checkpoints on the embedded timeline). Its buttons call the session; a
:class:`~napari_dgc._qt.training_runner.TrainingRunner` carries the requests out in a background
worker and feeds the events back into the models. Plots and the progress bar are redrawn by a
10 Hz timer from the session's history. The settings form is generated from the configuration
(:mod:`napari_dgc._qt.settings_form`).

Buttons: **Start** a new run; **Pause**/**Resume** a running training (the worker stops
pulling events); **Resume** also continues a stopped or opened run from its latest checkpoint,
with the run's own settings; **Stop** closes the training generator, which leaves the run
folder consistent.
"""

from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_dgc.config import TrainConfig
from napari_dgc.errors import DGCError
from napari_dgc.run_folder import RunDirectory
from napari_dgc.state.review import ReviewModel
from napari_dgc.state.training import TrainingSession, TrainStatus, error_message
from napari_dgc.training.events import ACTIVE_SHARE, LOSS_TERMS, start_name

from .band_wavelength import follow_band_wavelength
from .collapsible import CollapsibleSection
from .cube_layers import CubeSource
from .cube_list import CubeLayerList
from .plots import SparklineGrid
from .settings_form import ScientificSpinBox, SettingsForm
from .timeline_widget import TimelineWidget
from .training_runner import TrainingRunner
from .workers import call_on_window_close

__all__ = ["DEFAULT_RUNS_ROOT", "ScientificSpinBox", "TrainWidget", "available_devices", "default_run_folder"]

#: Parent folder of automatically named run folders.
DEFAULT_RUNS_ROOT = Path.home() / "napari-dgc-runs"

#: Plots and the progress bar are redrawn at most this often (milliseconds).
REDRAW_INTERVAL_MS = 100

#: The loss panel's plot of ``ProgressEvent.active_clusters`` and what it counts.
ACTIVE_IN_STEP = "active in step"
ACTIVE_IN_STEP_HELP = (
    f"Clusters holding at least {ACTIVE_SHARE:.0%} of a training step's pixels; "
    "the timeline's 'active in cubes' counts the reviewed cubes instead"
)


def available_devices() -> list[str]:
    """Devices offered in the panel: "auto", "cpu" and "cuda" where it may be usable.

    Without importing PyTorch (seconds, which would freeze napari while the panel docks):
    "cuda" is offered when torch is already imported and has CUDA, or, before that, when an
    NVIDIA driver is installed. A CUDA device torch cannot use is refused when training starts.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
    else:
        cuda = Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None
    return ["auto", "cpu"] + (["cuda"] if cuda else [])


def default_run_folder() -> Path:
    """A new, time-stamped run folder under :data:`DEFAULT_RUNS_ROOT`."""
    return DEFAULT_RUNS_ROOT / datetime.now().strftime("%Y%m%d-%H%M%S")


class TrainWidget(QWidget):
    """Dock widget to train DGC on cube layers and browse the checkpoints as they arrive.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose cube layers are trained on.

    Attributes
    ----------
    session : TrainingSession
        The training shown (script it: ``session.start(config, run_dir, sources)``).
    review : ReviewModel
        The checkpoints shown on the embedded :attr:`timeline`.
    form : SettingsForm
        The settings fields, by dotted key in ``form.fields``.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = TrainingSession()
        self.review = ReviewModel()
        self.runner = TrainingRunner(self.session, self.review, self)
        self.form = SettingsForm(available_devices())
        self._plots_dirty = False
        self._build()

        session = self.session
        session.status_changed.connect(self._on_status_changed)
        session.started.connect(self._on_started)
        session.progress.connect(self._mark_dirty)
        session.run_changed.connect(self._on_run_changed)
        # Looked up when called, so the notifications can be replaced (tests).
        session.message.connect(lambda text: show_info(text))
        session.failed.connect(lambda text: show_error(text))
        session.failed.connect(self._show_error)
        self.review.run_changed.connect(self._on_review_run_changed)
        self._on_status_changed(session.status)

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self._redraw_timer.timeout.connect(self._redraw)
        self._redraw_timer.start()
        call_on_window_close(self, self.shutdown)
        follow_band_wavelength(self.viewer)  # the band slider gives only an index

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        # Scrolls vertically; as wide as its content needs (nothing clipped on the right), and a
        # horizontal scroll bar only if the dock is made narrower still.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        scroll.setFrameShape(QFrame.NoFrame)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        self._scroll, self._body = scroll, body
        layout = QVBoxLayout(body)

        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        self.cube_list = CubeLayerList(self.viewer)
        self.cube_list.ticks_changed.connect(lambda: self._on_status_changed(self.session.status))
        settings_layout.addWidget(self.cube_list)
        settings_layout.addWidget(self._build_training_box())
        self.settings_section = CollapsibleSection("Settings", settings, expanded=True)
        layout.addWidget(self.settings_section)

        buttons = QGridLayout()  # two rows: the panel stays narrow enough for a 1280 px window
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.start_button.setToolTip("Train a new run on the ticked cube layers")
        self.resume_button.setToolTip(
            "Continue a paused training, or a stopped/opened run from its latest checkpoint "
            "with the run's own settings (steps, checkpoint interval and device from the form)"
        )
        self.stop_button.setToolTip("Stop training; checkpoints written so far stay usable")
        self.start_button.clicked.connect(self.start_training)
        self.pause_button.clicked.connect(self.pause_training)
        self.resume_button.clicked.connect(self.resume_training)
        self.stop_button.clicked.connect(self.stop_training)
        for index, button in enumerate(
            (self.start_button, self.pause_button, self.resume_button, self.stop_button)
        ):
            buttons.addWidget(button, index // 2, index % 2)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("step %v / %m")
        self.progress_label = QLabel("idle")
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        # The whole of the last error (a notification may be cut short), until the next start.
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error_label.setStyleSheet("color: #e05555;")
        self.error_label.hide()
        layout.addWidget(self.error_label)

        self.loss_plots = SparklineGrid(columns=3)
        self.loss_plots.prepare(len(LOSS_TERMS) + 1)  # and "active in step"
        layout.addWidget(CollapsibleSection("Losses and clusters active in each step", self.loss_plots))

        self.timeline = TimelineWidget(self.viewer, model=self.review)
        layout.addWidget(CollapsibleSection("Checkpoints", self.timeline))
        layout.addStretch(1)

    def _build_training_box(self) -> QGroupBox:
        box = QGroupBox("Training")
        form = QFormLayout(box)
        form.addRow(self.form.basic.native)
        run_row = QHBoxLayout()
        self.run_folder_edit = QLineEdit()
        self.run_folder_edit.setPlaceholderText(f"automatic: {DEFAULT_RUNS_ROOT}/<date-time>")
        browse = QPushButton("…")
        browse.setToolTip("Choose the folder of the new run")
        browse.clicked.connect(self._browse_run_folder)
        run_row.addWidget(self.run_folder_edit, 1)
        run_row.addWidget(browse)
        form.addRow("Run folder", run_row)
        self.advanced_section = CollapsibleSection(
            "Advanced options", self.form.advanced.native, expanded=False
        )
        form.addRow(self.advanced_section)
        return box

    def _browse_run_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of the new run")
        if folder:
            self.run_folder_edit.setText(folder)

    def minimumSizeHint(self) -> QSize:
        """As wide as the content needs (measured now, once napari's style applies), any height.

        The dock then never clips the buttons on the right; the content scrolls vertically.
        """
        width = self._body.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width()
        return QSize(width + 2 * self._scroll.frameWidth(), super().minimumSizeHint().height())

    # ------------------------------------------------------------------ cube layers
    @property
    def layer_list(self):
        """The list of cube layers (a ``QListWidget``)."""
        return self.cube_list.layer_list

    @property
    def band_axis_combo(self):
        """Band axis of plain image layers."""
        return self.cube_list.band_axis_combo

    def select_layers(self, names: list[str]) -> None:
        """Tick exactly the cube layers called ``names`` (for scripts and the demo)."""
        self.cube_list.select(names)

    def ticked_sources(self) -> list[CubeSource]:
        """The ticked cube layers captured for the engine (their data read now)."""
        return self.cube_list.ticked_sources()

    # ------------------------------------------------------------------ settings
    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` the panel's fields describe (defaults elsewhere)."""
        return self.form.config()

    def set_config(self, config: TrainConfig) -> None:
        """Show ``config`` in the panel's fields."""
        self.form.set_config(config)

    # ------------------------------------------------------------------ controls
    def start_training(self) -> bool:
        """Start a new run on the ticked cube layers.

        Returns
        -------
        bool
            Whether a worker was started (otherwise a notification says why).
        """
        if self.session.status is not TrainStatus.IDLE:
            return False
        text = self.run_folder_edit.text().strip()
        try:
            config = self.train_config()
        except (DGCError, ValueError) as error:
            show_error(error_message(error))
            return False
        sources = self._sources_or_notify()
        return bool(sources) and self.session.start(
            config, Path(text).expanduser() if text else default_run_folder(), sources
        )

    def resume_training(self) -> bool:
        """Resume a paused worker, or continue the session's run from its latest checkpoint
        with the run's own settings (only steps, checkpoint interval and device from the form).
        """
        status = self.session.status
        if status is TrainStatus.PAUSED:
            self.session.resume()
            return True
        if status is not TrainStatus.IDLE or self.session.run_dir is None:
            return False
        sources = self._sources_or_notify()
        if not sources:
            return False
        try:
            return self.session.resume_run(self.train_config(), sources)
        except (DGCError, ValueError, OSError) as error:
            show_error(error_message(error))
            return False

    def pause_training(self) -> None:
        """Stop pulling training events until :meth:`resume_training`."""
        self.session.pause()

    def stop_training(self) -> None:
        """Stop the training; the run keeps every checkpoint written so far."""
        self.session.stop()

    def _sources_or_notify(self) -> list[CubeSource]:
        sources = self.ticked_sources()
        if not sources:
            show_error("Tick at least one cube layer to train on")
        return sources

    @property
    def worker(self):
        """The training worker while one runs, else ``None``."""
        return self.runner.worker

    # ------------------------------------------------------------------ model changes
    def _show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setToolTip(text)
        self.error_label.show()

    def _on_started(self) -> None:
        self.error_label.hide()
        self.error_label.clear()
        self.loss_plots.remove_plots()
        self.progress_bar.setRange(0, self.session.total_run_steps)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("step %v / %m")
        self.progress_label.setText("starting…")

    def _on_run_changed(self, _run_dir) -> None:
        """The session's run changed (started, or opened): show the settings it trains with."""
        if self.session.config is not None:
            self.set_config(self.session.config)
        self._on_status_changed(self.session.status)

    def _on_review_run_changed(self, path) -> None:
        """A run opened on the timeline becomes the run that Resume continues."""
        if self.review.live or self.session.status is not TrainStatus.IDLE:
            return
        try:
            config = RunDirectory.open(path).config
        except DGCError as error:
            show_error(error_message(error))
            config = None
        self.session.set_run(path, config)

    def _on_status_changed(self, status: TrainStatus) -> None:
        idle = status is TrainStatus.IDLE
        any_ticked = self.cube_list.any_ticked()
        self.start_button.setEnabled(idle and any_ticked)
        self.pause_button.setEnabled(status is TrainStatus.RUNNING)
        self.resume_button.setEnabled(
            status is TrainStatus.PAUSED or (idle and any_ticked and self.session.run_dir is not None)
        )
        self.stop_button.setEnabled(status in (TrainStatus.RUNNING, TrainStatus.PAUSED))
        self.layer_list.setEnabled(idle)
        if status is TrainStatus.RUNNING:
            self.settings_section.set_expanded(False)  # make room for the plots and the timeline
        elif idle or status is TrainStatus.PAUSED:
            # Paused: show the step reached now, not the one of the last 10 Hz redraw.
            self._plots_dirty = True
            self._redraw()
        if status is not TrainStatus.RUNNING:
            self.progress_label.setText(self.session.progress_text())

    def _mark_dirty(self) -> None:
        self._plots_dirty = True

    # ------------------------------------------------------------------ drawing
    def _redraw(self) -> None:
        """Progress bar, ETA and loss plots from the history (called by a 10 Hz timer)."""
        if not self._plots_dirty:
            return
        self._plots_dirty = False
        history = self.session.history
        event = history.latest
        if event is None:
            return
        # QProgressBar.setValue repaints at once, outside the coalesced repaint of the plots:
        # with updates disabled it only stores the value, and re-enabling schedules a repaint.
        self.progress_bar.setUpdatesEnabled(False)
        self.progress_bar.setMaximum(event.run_total_steps)
        self.progress_bar.setValue(event.run_step)
        if event.run_total_steps != event.total_steps:  # several starts
            self.progress_bar.setFormat(f"step %v / %m · {start_name(event.start)}, its step {event.step}")
        self.progress_bar.setUpdatesEnabled(True)
        if self.session.status in (TrainStatus.RUNNING, TrainStatus.PAUSED):
            self.progress_label.setText(self.session.progress_text())
        # One repaint for all plots, after every plot has its new data.
        self.loss_plots.setUpdatesEnabled(False)
        for name, values in history.losses.items():
            plot = self.loss_plots.plot(name, tooltip=f"weighted loss term {name!r} at each step")
            plot.set_series([(name, history.steps, values)])
            plot.set_x_range(0, event.run_total_steps)
        active = self.loss_plots.plot(ACTIVE_IN_STEP, tooltip=ACTIVE_IN_STEP_HELP)
        active.set_series([("active", history.steps, history.active_in_step)])
        active.set_x_range(0, event.run_total_steps)
        self.loss_plots.setUpdatesEnabled(True)

    # ------------------------------------------------------------------ closing
    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop the workers and wait for them (napari is closing)."""
        self._redraw_timer.stop()
        self.runner.shutdown(timeout_s)
        self.timeline.shutdown()
