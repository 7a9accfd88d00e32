"""Save and reopen the whole session as one project file: "Save project…" / "Open project…".

The buttons sit in the "DGC: Checkpoints" panel; File ▸ IO Utilities has the same two items
(npe2 menu contributions, :func:`save_project_command` / :func:`open_project_command`). The
project file itself is :mod:`napari_dgc.state.project`; this module turns the viewer into a
:class:`~napari_dgc.state.project.Project` and back:

* cube layers from the napari-dgc reader (their files and open options);
* the run and checkpoint of the timeline (else of the "DGC clusters" layers);
* the merge panel's class mapping, mask class names and last IoU scores;
* mask layers: an imported mask file that still holds what the layer shows is named as it is;
  painted masks are written next to the project (``<project>-masks/<cube>_mask.tif`` + legend).

Reopening reads every file in a worker first (:func:`read_for_viewer`: the checked project,
its cubes, masks and pseudo-RGB bands): a project with one bad field or missing file is refused
whole, before any layer is added. Then the cubes become layers (reused if already open), the
masks mask layers, the run opens on the timeline at the saved checkpoint, and once its clusters
are shown the merge panel gets the mapping (and recomputes the scores when the project had some).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.export import write_label_map
from napari_dgc.analysis.masks import read_mask
from napari_dgc.errors import DGCError
from napari_dgc.state.project import (
    PROJECT_SUFFIX,
    Project,
    ProjectCube,
    ProjectFiles,
    ProjectMask,
    mask_binning,
    project_path,
    read_project,
    save_project,
)
from napari_dgc.state.training import error_message

from .cube_layers import is_reader_cube

if TYPE_CHECKING:
    from .merge_widget import MergeWidget

PLUGIN = "napari-dgc"
CHECKPOINTS_PANEL = "DGC: Checkpoints"
MERGE_PANEL = "DGC: Cluster merge"
_FILTER = f"napari-dgc project (*{PROJECT_SUFFIX})"


def masks_folder(project_file: str | Path) -> Path:
    """Folder next to the project file that receives its painted masks."""
    path = Path(project_file)
    stem = path.name[: -len(PROJECT_SUFFIX)] if path.name.endswith(PROJECT_SUFFIX) else path.stem
    return path.with_name(f"{stem}-masks")


def find_merge_widget(viewer) -> MergeWidget | None:
    """The viewer's docked "DGC: Cluster merge" panel, if open."""
    from .merge_widget import MergeWidget

    return next((w for w in viewer.window.dock_widgets.values() if isinstance(w, MergeWidget)), None)


def _open_panel(viewer, name: str):
    """The docked panel ``name`` of napari-dgc, docking it if it is not open."""
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


class ProjectView(QWidget):
    """Buttons "Save project…" and "Open project…", with a status line.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer saved and restored.
    timeline : TimelineWidget
        The timeline the run and checkpoint are read from and reopened on (the panel that
        holds this view; not imported here, it imports this module).

    Signals
    -------
    restored(str)
        A project was reopened (the line of what it holds); its clusters, mapping and scores
        are shown.
    failed(str)
        Saving or reopening was refused; nothing was restored.
    """

    restored = Signal(str)
    failed = Signal(str)

    def __init__(self, napari_viewer, timeline, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.timeline = timeline
        self._worker = None
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.save_button = QPushButton("Save project…")
        self.save_button.setToolTip(
            "Save cubes, run, checkpoint, class mapping, masks and scores in one project file"
        )
        self.save_button.clicked.connect(self.ask_save)
        self.open_button = QPushButton("Open project…")
        self.open_button.setToolTip("Reopen a saved project: cubes, run at its checkpoint, mapping, masks")
        self.open_button.clicked.connect(self.ask_open)
        row.addWidget(self.save_button)
        row.addWidget(self.open_button)
        #: What the last save or opening did. The panel places it (under the whole width, where
        #: the buttons share a row); hidden until there is something to say, so it costs no
        #: height in a short dock.
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.hide()
        self.failed.connect(self._on_failed)

    def say(self, text: str) -> None:
        """Show ``text`` on :attr:`status_label`."""
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))

    def _on_failed(self, message: str) -> None:
        self.say(message)
        show_error(message)

    # ------------------------------------------------------------------ saving
    def ask_save(self) -> None:
        """Ask for a file name and save the project there (the dialog asked before replacing)."""
        path, _ = QFileDialog.getSaveFileName(self, "Save napari-dgc project", "", _FILTER)
        if path:
            self.save(project_path(path), overwrite=True)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the viewer's state as a project file; ``None`` (and :attr:`failed`) if refused."""
        path = Path(path).expanduser()
        try:
            if path.exists() and not overwrite:  # before painted masks are written for it
                raise FileExistsError(f"{path} exists; refusing to overwrite it")
            project, notes = self.collect(path)
            saved = save_project(path, project, overwrite=overwrite)
        except (DGCError, OSError) as error:
            self.failed.emit(f"Project not saved: {error_message(error)}")
            return None
        text = " ".join([f"Saved {saved.name}: {project.describe()}.", *notes])
        self.say(text)
        show_info(text)
        return saved

    def collect(self, path: Path) -> tuple[Project, list[str]]:
        """The project of the viewer's state, to be saved as ``path``; and notes on what was left out.

        Painted masks are written into :func:`masks_folder` of ``path``.
        """
        cubes, notes = [], []
        for layer in self.viewer.layers:
            if not is_reader_cube(layer):
                continue
            file = Path(layer.metadata[layer_keys.CUBE_PATH])
            if not file.exists():  # a sample scene, made in memory
                notes.append(f"Layer {layer.name!r} has no file and is not in the project.")
                continue
            provenance = layer.metadata.get(layer_keys.PROVENANCE) or {}
            shape = provenance.get("pixel_shape")
            cubes.append(
                ProjectCube(
                    layer.name, file, key=provenance.get("key"), shape=None if shape is None else tuple(shape)
                )
            )
        run, checkpoint = self._run_and_checkpoint()
        merge = find_merge_widget(self.viewer)
        mapping = class_names = scores = None
        if merge is not None:
            model = merge.model
            mapping = model.mapping if model.clustering is not None else None
            class_names = model.ground_truth.class_names
            scores = None if model.report is None else model.report.to_json()
        else:
            mapping = self._mapping_from_layers()
        names = {cube.name for cube in cubes}
        masks = self._masks(path, names, notes)
        project = Project(
            cubes=tuple(cubes),
            run=run,
            checkpoint=checkpoint,
            mapping=mapping,
            masks=tuple(masks),
            mask_class_names=class_names or "",
            scores=scores,
        )
        return project, notes

    def _run_and_checkpoint(self) -> tuple[Path | None, str | None]:
        model = self.timeline.model
        if model.run_path is not None and model.review is not None:
            return Path(model.run_path), model.current
        for layer in self.viewer.layers:
            if layer_keys.RUN in layer.metadata and layer_keys.N_CLUSTERS in layer.metadata:
                return Path(layer.metadata[layer_keys.RUN]), layer.metadata.get(layer_keys.CHECKPOINT)
        return None, None

    def _mapping_from_layers(self) -> ClassMapping | None:
        for layer in self.viewer.layers:
            if layer_keys.MAPPING in layer.metadata:
                return ClassMapping.from_json(layer.metadata[layer_keys.MAPPING], complete=False)
        return None

    def _masks(self, path: Path, cubes: set[str], notes: list[str]) -> list[ProjectMask]:
        """The mask of each saved cube that the merge panel scores with (the selected one where a
        cube has several); painted or changed masks are written into :func:`masks_folder`.
        """
        from napari_dgc._writer import layer_legend

        from .merge_layers import mask_inputs

        masks, written = [], set()
        for layer in mask_inputs(self.viewer)[1]:
            cube = layer.metadata[layer_keys.CUBE_LAYER]
            if cube not in cubes:
                notes.append(f"Mask {layer.name!r} belongs to no saved cube and is not in the project.")
                continue
            values = np.asarray(layer.data)
            file = layer.metadata.get(layer_keys.MASK_FILE)
            if file is None or not _holds(Path(file), values):
                # Layer names may hold any character: the file name keeps only safe ones.
                stem = re.sub(r"[^A-Za-z0-9._-]+", "_", cube).strip("._") or "cube"
                while stem in written:
                    stem += "_"
                written.add(stem)
                labels, legend = layer_legend(values, dict(layer.metadata), colormap=layer.colormap)
                file = masks_folder(path) / f"{stem}_mask.tif"
                write_label_map(file, labels, {**legend, "layer": layer.name}, overwrite=True)
                layer.metadata[layer_keys.MASK_FILE] = str(file)
            masks.append(ProjectMask(cube, Path(file)))
        return masks

    # ------------------------------------------------------------------ reopening
    def ask_open(self) -> None:
        """Ask for a project file and reopen it."""
        path, _ = QFileDialog.getOpenFileName(self, "Open napari-dgc project", "", _FILTER)
        if path:
            self.open(path)

    def open(self, path: str | Path):
        """Reopen a project: its files are read in a worker, then shown (see the module docstring).

        Returns the worker; :attr:`restored` or :attr:`failed` tells the outcome.
        """
        if self._worker is not None:
            self.failed.emit("A project is being opened already.")
            return None
        self.say(f"Opening {Path(path).name}…")
        self.open_button.setEnabled(False)
        self._worker = create_worker(
            read_for_viewer,
            path,
            _connect={
                "returned": self._restore,
                "errored": self._on_read_error,
                "finished": self._on_finished,
            },
            _ignore_errors=True,
        )
        return self._worker

    def _on_read_error(self, error: BaseException) -> None:
        self.failed.emit(f"Project not opened: {error_message(error)}")

    def _on_finished(self) -> None:
        self._worker = None
        self.open_button.setEnabled(True)

    def _restore(self, read: tuple[ProjectFiles, dict[str, list]]) -> None:
        files, layer_data = read
        project = files.project
        layers = {}
        for entry in project.cubes:
            layers[entry.name] = self._cube_layer(entry, files.cubes[entry.name], layer_data[entry.name])
        merge = None
        if project.mapping is not None or project.masks or project.mask_class_names or project.scores:
            merge = find_merge_widget(self.viewer) or _open_panel(self.viewer, MERGE_PANEL)
            merge.model.ground_truth.class_names = project.mask_class_names
        for cube, mask in files.masks.items():
            self._mask_layer(cube, mask, layers[cube], project)
        if project.run is None:
            self._finish(project, merge)
            return

        waiting = [True]

        def stop_waiting() -> None:
            waiting[0] = False
            self.timeline.checkpoint_shown.disconnect(shown)

        def shown(checkpoint_id: str) -> None:
            if waiting[0] and (project.checkpoint is None or checkpoint_id == project.checkpoint):
                stop_waiting()
                self._finish(project, merge)

        self.timeline.checkpoint_shown.connect(shown)
        # The timeline segments every open cube layer with the run's band count.
        if not self.timeline.open_run(project.run):
            stop_waiting()
            self.failed.emit(f"Project partly opened: the run {project.run} could not be shown.")
            return
        if waiting[0] and (not self.timeline.model.sources or not self.timeline.model.checkpoint_ids()):
            # No clusters will be shown (no cube with the run's bands, or no checkpoint yet).
            stop_waiting()
            why = "it has no checkpoint yet" if self.timeline.model.sources else "no open cube has its bands"
            self._finish(project, merge, [f"The run's clusters are not shown: {why}."])
            return
        if project.checkpoint is not None and self.timeline.current_checkpoint_id() != project.checkpoint:
            self.timeline.select_checkpoint(project.checkpoint)

    def _cube_layer(self, entry: ProjectCube, cube, layer_data: list):
        """The cube's layer: one already open on the same file, else new ones (cube + pseudo-RGB)."""
        for layer in self.viewer.layers:
            if (
                is_reader_cube(layer)
                and layer.name == entry.name
                and Path(layer.metadata[layer_keys.CUBE_PATH]) == Path(cube.path)
            ):
                return layer
        (cube_data, cube_kwargs, _), (rgb, rgb_kwargs, _) = layer_data
        layer = self.viewer.add_image(cube_data, **cube_kwargs)
        self.viewer.add_image(rgb, **rgb_kwargs)
        return layer

    def _mask_layer(self, cube: str, mask, cube_layer, project: Project) -> None:
        from .merge_layers import add_mask_layer, mask_layer_name

        file = next(m.path for m in project.masks if m.cube == cube)
        for layer in self.viewer.layers:
            if layer.name == mask_layer_name(cube) and layer.metadata.get(layer_keys.MASK_FILE) == str(file):
                return  # reopened twice: the layer is there already
        # Placed like the cube's pixels, or like the clusters of a binned run (one mask pixel
        # per block, centred on it: as the timeline places cluster labels).
        binning = mask_binning(tuple(cube_layer.data.shape[-2:]), mask.values.shape)
        scale = np.asarray(cube_layer.scale[-2:], dtype=float)
        translate = np.asarray(cube_layer.translate[-2:], dtype=float) + scale * (binning - 1) / 2
        placement = SimpleNamespace(scale=tuple(scale * binning), translate=tuple(translate))
        add_mask_layer(self.viewer, mask.values, mask.legend, cube, placement, mask_file=file)

    def _finish(self, project: Project, merge: MergeWidget | None, notes: list[str] | None = None) -> None:
        """The run's clusters are shown: hand the mapping to the merge panel, recompute the scores."""
        notes = list(notes or [])
        if merge is not None:
            merge.refresh_layers()  # the cluster layers now hold the saved checkpoint's clusters
        if merge is not None and project.mapping is not None:
            try:
                merge.model.set_mapping(project.mapping)
            except DGCError as error:
                notes.append(f"Class mapping not restored: {error}.")
        if merge is not None and project.scores is not None and merge.model.clustering is not None:
            try:
                merge.model.compute_iou()
            except DGCError as error:
                notes.append(f"Scores not recomputed: {error}.")
        text = " ".join([f"Opened {project.describe()}.", *notes])
        self.say(text)
        show_info(text)
        self.restored.emit(text)


def read_for_viewer(path: str | Path) -> tuple[ProjectFiles, dict[str, list]]:
    """:func:`~napari_dgc.state.project.read_project` and each cube's layer data tuples (its
    pseudo-RGB bands read from disk): all the reading of an opening, done in the worker.
    """
    from napari_dgc._reader import cube_layer_data

    files = read_project(path)
    return files, {name: cube_layer_data(cube, name=name) for name, cube in files.cubes.items()}


def _holds(file: Path, values: np.ndarray) -> bool:
    """Whether the mask ``file`` still reads as ``values`` (else the layer was painted since)."""
    try:
        return np.array_equal(read_mask(file, shape=values.shape).values, values)
    except DGCError:
        return False


def _project_view(viewer) -> ProjectView:
    timeline = _open_panel(viewer, CHECKPOINTS_PANEL)
    return timeline.project_view


def save_project_command(viewer: napari.viewer.Viewer) -> None:
    """File ▸ IO Utilities ▸ Save napari-dgc project… (npe2 command)."""
    _project_view(viewer).ask_save()


def open_project_command(viewer: napari.viewer.Viewer) -> None:
    """File ▸ IO Utilities ▸ Open napari-dgc project… (npe2 command)."""
    _project_view(viewer).ask_open()
