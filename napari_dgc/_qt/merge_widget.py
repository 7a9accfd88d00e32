"""The "DGC: Cluster merge" panel: merge learned clusters into named classes, score them, export.

The panel is a thin layer over the engine (:mod:`napari_dgc.analysis.classes`,
:mod:`napari_dgc.analysis.masks`, :mod:`napari_dgc.analysis.evaluation`, :mod:`napari_dgc.analysis.export`):

* it finds the "DGC clusters [<cube>]" Labels layers of the train panel (metadata ``dgc_run``,
  ``dgc_checkpoint``, ``dgc_cube_layer``, ``dgc_n_clusters``, ``dgc_label_offset``) and groups
  them by run and checkpoint;
* it shows each cluster's colour, class, pixel share (overall and per cube) and mean spectrum
  ± standard deviation (streamed over the cube), and keeps one "DGC classes [<cube>]" Labels
  layer per cube up to date with every change of the mapping;
* masks are Labels layers with ``metadata["dgc_cube_layer"]`` (drawn, imported, or the
  synthetic sample's ground truth); values follow :mod:`napari_dgc.analysis.masks`;
* a click on the canvas shows the pixel's spectrum, cluster and class.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_dgc import layer_metadata as layer_keys
from napari_dgc._qt.cube_layers import cluster_colors
from napari_dgc._qt.merge_parts import ClassListWidget, SpectrumPlot, swatch
from napari_dgc.analysis.classes import (
    ClassMapping,
    ClusterStatistics,
    SemanticClass,
    cluster_statistics,
    default_class_color,
)
from napari_dgc.errors import DGCError
from napari_dgc.analysis.evaluation import (
    POOLED,
    SUGGESTION_METHODS,
    EvaluationReport,
    evaluate_classes,
    suggest_mapping,
    write_report,
)
from napari_dgc.analysis.export import export_model_folder, write_class_map
from napari_dgc.analysis.masks import DEFAULT_LEGEND, MASK_SUFFIXES, Mask, match_masks, parse_legend, read_mask

CLASSES_PREFIX = "DGC classes"
MASK_PREFIX = "DGC mask"
_ERROR_STYLE = "color: #e05050;"


def classes_layer_name(cube_name: str) -> str:
    """Name of the Labels layer that shows the classes of a cube."""
    return f"{CLASSES_PREFIX} [{cube_name}]"


def mask_layer_name(cube_name: str) -> str:
    """Name of a mask layer created for a cube."""
    return f"{MASK_PREFIX} [{cube_name}]"


def is_cluster_layer(layer) -> bool:
    """Whether ``layer`` shows DGC clusters (made by the train panel)."""
    return isinstance(layer, Labels) and {layer_keys.RUN, layer_keys.N_CLUSTERS, layer_keys.CUBE_LAYER} <= layer.metadata.keys()


def is_mask_layer(layer) -> bool:
    """Whether ``layer`` is a ground-truth mask of a cube (not clusters, not classes)."""
    metadata = layer.metadata
    return (
        isinstance(layer, Labels)
        and layer_keys.CUBE_LAYER in metadata
        and layer_keys.N_CLUSTERS not in metadata
        and layer_keys.MAPPING not in metadata
    )


def mask_legend(layer: Labels) -> dict[int, str]:
    """Value → class name of a mask layer (``metadata["class_names"]``, else the default)."""
    names = layer.metadata.get("class_names")
    return dict(enumerate(names)) if names else dict(DEFAULT_LEGEND)


def _guarded(method: Callable) -> Callable:
    """Show bad input (and refused overwrites) in the panel instead of raising."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (DGCError, FileExistsError, OSError) as error:
            self.show_status(str(error), error=True)
            return None

    return wrapper


class MergeWidget(QWidget):
    """Cluster-merge, mask and IoU panel (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.mapping = ClassMapping(
            [SemanticClass(name, default_class_color(name, i)) for i, name in enumerate(("background", "tissue"))],
            n_clusters=1,
        )
        self.cluster_layers: list[Labels] = []
        self.statistics: dict[str, ClusterStatistics] = {}
        self.report: EvaluationReport | None = None
        self.pixel: tuple[str, np.ndarray] | None = None
        self._group_keys: list[tuple] = []
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(self._disconnect)
        self.refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)

        top = QHBoxLayout()
        self.clustering_combo = QComboBox()
        self.clustering_combo.currentIndexChanged.connect(lambda _: self._load_clustering())
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_layers)
        top.addWidget(QLabel("Clusters:"))
        top.addWidget(self.clustering_combo, 1)
        top.addWidget(refresh)
        layout.addLayout(top)

        classes_box = QGroupBox("Classes (double-click to rename; drop clusters here)")
        classes_layout = QGridLayout(classes_box)
        self.class_list = ClassListWidget()
        self.class_list.setMaximumHeight(110)
        self.class_list.itemChanged.connect(self._on_class_renamed)
        self.class_list.clusters_dropped.connect(lambda row: self.assign_selected(row))
        classes_layout.addWidget(self.class_list, 0, 0, 4, 1)
        for row, (text, slot) in enumerate(
            (("Add class", self._add_class_clicked), ("Remove", self._remove_class_clicked),
             ("Colour…", self._color_clicked), ("Unassign", lambda: self.assign_selected(None)))
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            classes_layout.addWidget(button, row, 1)
        self.assign_button = QPushButton("Assign selected clusters to class ▸")
        self.assign_button.clicked.connect(lambda: self.assign_selected(self.class_list.currentRow()))
        classes_layout.addWidget(self.assign_button, 4, 0, 1, 2)
        layout.addWidget(classes_box)

        self.cluster_table = QTableWidget()
        self.cluster_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.cluster_table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.cluster_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.cluster_table.setDragEnabled(True)
        self.cluster_table.setDragDropMode(QAbstractItemView.DragOnly)
        self.cluster_table.verticalHeader().setVisible(False)
        self.cluster_table.itemSelectionChanged.connect(self._plot)
        layout.addWidget(self.cluster_table, 1)

        self.spectrum_plot = SpectrumPlot()
        layout.addWidget(self.spectrum_plot)
        self.pixel_label = QLabel("Click a pixel to see its spectrum, cluster and class.")
        self.pixel_label.setWordWrap(True)
        layout.addWidget(self.pixel_label)

        mapping_row = QHBoxLayout()
        for text, slot in (("Load mapping…", self._load_mapping_clicked), ("Save mapping…", self._save_mapping_clicked)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            mapping_row.addWidget(button)
        layout.addLayout(mapping_row)

        masks_box = QGroupBox("Masks and IoU")
        masks_layout = QGridLayout(masks_box)
        self.mask_label = QLabel()
        self.mask_label.setWordWrap(True)
        masks_layout.addWidget(self.mask_label, 0, 0, 1, 3)
        new_mask = QPushButton("New mask layer")
        new_mask.setToolTip("0 = background, 1 = tissue, 2 = lesion, 255 = ignore; paint with the brush")
        new_mask.clicked.connect(lambda: self.new_mask_layer())
        import_masks = QPushButton("Import masks…")
        import_masks.clicked.connect(self._import_masks_clicked)
        masks_layout.addWidget(new_mask, 1, 0)
        masks_layout.addWidget(import_masks, 1, 1)
        self.mask_classes_edit = QLineEdit()
        self.mask_classes_edit.setPlaceholderText("mask class names of values 0, 1, ... (optional)")
        self.mask_classes_edit.setToolTip(
            "Optional names of mask values 0, 1, 2, ... for scoring, overriding the layers' own;\n"
            "repeat a name to merge values, e.g. 'background, tissue, tissue' scores lesion as tissue"
        )
        masks_layout.addWidget(self.mask_classes_edit, 2, 0, 1, 3)
        self.method_combo = QComboBox()
        self.method_combo.addItems(SUGGESTION_METHODS)
        self.method_combo.setToolTip("automatic mapping: Hungarian (one-to-one) or many-to-one")
        suggest = QPushButton("Suggest mapping")
        suggest.clicked.connect(lambda: self.apply_suggestion())
        masks_layout.addWidget(self.method_combo, 3, 0)
        masks_layout.addWidget(suggest, 3, 1)
        compute = QPushButton("Compute IoU")
        compute.clicked.connect(lambda: self.compute_iou())
        masks_layout.addWidget(compute, 3, 2)
        self.iou_table = QTableWidget()
        self.iou_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.iou_table.setMaximumHeight(140)
        masks_layout.addWidget(self.iou_table, 4, 0, 1, 3)
        self.confusion_label = QLabel()
        self.confusion_label.setFont(QFont("monospace", 8))
        self.confusion_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        masks_layout.addWidget(self.confusion_label, 5, 0, 1, 3)
        for column, (text, suffix) in enumerate((("Export CSV…", "csv"), ("Export JSON…", "json"))):
            button = QPushButton(text)
            button.clicked.connect(functools.partial(self._export_report_clicked, suffix))
            masks_layout.addWidget(button, 6, column)
        layout.addWidget(masks_box)

        export_box = QGroupBox("Export")
        export_layout = QHBoxLayout(export_box)
        self.format_combo = QComboBox()
        self.format_combo.addItems(["tif", "png", "npy"])
        class_maps = QPushButton("Class maps…")
        class_maps.clicked.connect(self._export_class_maps_clicked)
        model_folder = QPushButton("Model folder…")
        model_folder.setToolTip("checkpoint weights + settings + class mapping, for napari-dgc segment --classes")
        model_folder.clicked.connect(self._export_model_clicked)
        export_layout.addWidget(self.format_combo)
        export_layout.addWidget(class_maps)
        export_layout.addWidget(model_folder)
        layout.addWidget(export_box)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

    def show_status(self, message: str, *, error: bool = False) -> None:
        """Show a message (errors in red) at the bottom of the panel."""
        self.status_label.setStyleSheet(_ERROR_STYLE if error else "")
        self.status_label.setText(message)

    def _disconnect(self) -> None:
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)

    # ------------------------------------------------------------------ layers
    def _on_layers_changed(self, event=None) -> None:
        self.refresh_layers()

    def _clusterings(self) -> dict[tuple, list[Labels]]:
        groups: dict[tuple, list[Labels]] = {}
        for layer in self.viewer.layers:
            if is_cluster_layer(layer):
                meta = layer.metadata
                key = (str(meta[layer_keys.RUN]), meta.get(layer_keys.CHECKPOINT), int(meta[layer_keys.N_CLUSTERS]))
                groups.setdefault(key, []).append(layer)
        return groups

    def refresh_layers(self) -> None:
        """Re-read the viewer's cluster and mask layers (keeps the chosen clustering)."""
        groups = self._clusterings()
        current = self._group_keys[self.clustering_combo.currentIndex()] if self._group_keys and self.clustering_combo.currentIndex() >= 0 else None
        keys = list(groups)
        self.clustering_combo.blockSignals(True)
        self.clustering_combo.clear()
        for run, checkpoint, k in keys:
            count = len(groups[(run, checkpoint, k)])
            self.clustering_combo.addItem(f"{Path(run).name} @ {checkpoint} (K={k}, {count} cube{'s' * (count != 1)})")
        self._group_keys = keys
        if current in keys:
            self.clustering_combo.setCurrentIndex(keys.index(current))
        self.clustering_combo.blockSignals(False)
        new_layers = groups.get(self._current_key(), [])
        if [id(layer) for layer in new_layers] != [id(layer) for layer in self.cluster_layers]:
            self._load_clustering()
        self._update_mask_label()

    def _current_key(self) -> tuple | None:
        index = self.clustering_combo.currentIndex()
        return self._group_keys[index] if 0 <= index < len(self._group_keys) else None

    def _load_clustering(self) -> None:
        for layer in self.cluster_layers:
            layer.events.data.disconnect(self._on_cluster_data_changed)
        key = self._current_key()
        self.cluster_layers = self._clusterings().get(key, []) if key else []
        for layer in self.cluster_layers:
            layer.events.data.connect(self._on_cluster_data_changed)
        if key is None:
            self.statistics = {}
            self._fill_cluster_table()
            self.show_status("No 'DGC clusters' layers yet: train a run or show a checkpoint first.")
            return
        n_clusters = key[2]
        if n_clusters != self.mapping.n_clusters:
            self.mapping = ClassMapping([SemanticClass(c.name, c.color) for c in self.mapping.classes], n_clusters)
        self._compute_statistics()
        self._mapping_changed()
        self.show_status(f"{len(self.cluster_layers)} cube(s), {n_clusters} clusters of checkpoint {key[1]}.")

    def _on_cluster_data_changed(self, event=None) -> None:
        self.refresh_layers()
        self._compute_statistics()
        self._mapping_changed()

    def cluster_maps(self) -> dict[str, np.ndarray]:
        """Cube name → cluster ids ``0..K-1`` of the current clustering."""
        return {
            layer.metadata[layer_keys.CUBE_LAYER]: np.asarray(layer.data).astype(np.int64)
            - int(layer.metadata.get(layer_keys.LABEL_OFFSET, 0))
            for layer in self.cluster_layers
        }

    def _cube_layer(self, name: str) -> Image | None:
        return next((layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.name == name and layer.ndim == 3), None)

    def _compute_statistics(self) -> None:
        self.statistics = {}
        for cube, labels in self.cluster_maps().items():
            cube_layer = self._cube_layer(cube)
            if cube_layer is not None and cube_layer.data.shape[1:] == labels.shape:
                self.statistics[cube] = cluster_statistics(cube_layer.data, labels, self.mapping.n_clusters, band_axis=0)
        self._fill_cluster_table()

    # ------------------------------------------------------------------ mapping
    def _mapping_changed(self) -> None:
        self._fill_class_list()
        self._fill_cluster_table()
        self.update_classes_layers()
        self._plot()

    def _fill_class_list(self) -> None:
        current = self.class_list.currentRow()
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for cls in self.mapping.classes:
            item = QListWidgetItem(swatch(cls.color), cls.name)
            item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.class_list.addItem(item)
        self.class_list.setCurrentRow(min(max(current, 0), len(self.mapping.classes) - 1))
        self.class_list.blockSignals(False)

    def _fill_cluster_table(self) -> None:
        k = self.mapping.n_clusters if self.cluster_layers else 0
        cubes = list(self.statistics)
        pooled = ClusterStatistics.pooled(self.statistics.values()) if self.statistics else None
        headers = ["cluster", "class", "all %"] + [f"{c} %" for c in cubes]
        selected = self.selected_clusters()
        table = self.cluster_table
        table.blockSignals(True)
        table.clear()
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(k)
        colors = cluster_colors(k)
        for cluster in range(k):
            table.setItem(cluster, 0, QTableWidgetItem(swatch(colors[cluster]), str(cluster)))
            owner = self.mapping.class_of_cluster(cluster)
            if owner is None:
                table.setItem(cluster, 1, QTableWidgetItem("—"))
            else:
                cls = self.mapping.classes[owner]
                table.setItem(cluster, 1, QTableWidgetItem(swatch(cls.color), cls.name))
            shares = [pooled] + [self.statistics[c] for c in cubes] if pooled is not None else []
            for column, stats in enumerate(shares, start=2):
                item = QTableWidgetItem(f"{100 * stats.shares[cluster]:.1f}")
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                table.setItem(cluster, column, item)
        table.resizeColumnsToContents()
        self.select_clusters([cluster for cluster in selected if cluster < k])
        table.blockSignals(False)

    def selected_clusters(self) -> list[int]:
        """Clusters whose rows are selected in the table."""
        return sorted({index.row() for index in self.cluster_table.selectedIndexes()})

    def select_clusters(self, clusters: list[int]) -> None:
        """Select table rows (used by tests and the pixel click)."""
        self.cluster_table.clearSelection()
        model, selection = self.cluster_table.model(), self.cluster_table.selectionModel()
        for cluster in clusters:
            selection.select(model.index(cluster, 0), selection.Select | selection.Rows)

    @_guarded
    def assign_selected(self, class_index: int | None) -> None:
        """Put the selected clusters into class ``class_index`` (0-based), or none for ``None``."""
        clusters = self.selected_clusters()
        if not clusters:
            self.show_status("Select clusters in the table first.", error=True)
            return
        if class_index is not None and not 0 <= class_index < len(self.mapping.classes):
            self.show_status("Select a class first.", error=True)
            return
        self.mapping.assign(clusters, class_index)
        self._mapping_changed()
        target = "no class" if class_index is None else self.mapping.classes[class_index].name
        self.show_status(f"Cluster(s) {clusters} → {target}.")

    @_guarded
    def add_class(self, name: str, color: str | None = None) -> None:
        """Append a class (a unique name; default colour by name)."""
        index = len(self.mapping.classes)
        self.mapping.classes.append(SemanticClass(name, color or default_class_color(name, index)))
        try:
            self.mapping.validate()
        except DGCError:
            self.mapping.classes.pop()
            raise
        self._mapping_changed()
        self.class_list.setCurrentRow(index)

    def _add_class_clicked(self) -> None:
        taken = {c.name.lower() for c in self.mapping.classes}
        name = next(n for n in ("lesion", *(f"class {i}" for i in range(1, 1000))) if n not in taken)
        self.add_class(name)

    def _remove_class_clicked(self) -> None:
        row = self.class_list.currentRow()
        if 0 <= row < len(self.mapping.classes):
            removed = self.mapping.classes.pop(row)
            self._mapping_changed()
            self.show_status(f"Removed class {removed.name!r}; its clusters are unassigned.")

    def set_class_color(self, row: int, color: str) -> None:
        """Recolour a class (``"#rrggbb"``)."""
        self.mapping.classes[row].color = color
        self._mapping_changed()

    def _color_clicked(self) -> None:
        row = self.class_list.currentRow()
        if not 0 <= row < len(self.mapping.classes):
            return
        color = QColorDialog.getColor(QColor(self.mapping.classes[row].color), self, "Class colour")
        if color.isValid():
            self.set_class_color(row, color.name())

    def _on_class_renamed(self, item: QListWidgetItem) -> None:
        row = self.class_list.row(item)
        old = self.mapping.classes[row].name
        self.mapping.classes[row].name = item.text().strip()
        try:
            self.mapping.validate()
        except DGCError as error:
            self.mapping.classes[row].name = old
            self.show_status(str(error), error=True)
        self._mapping_changed()

    def update_classes_layers(self) -> None:
        """Show the current mapping as one "DGC classes [<cube>]" layer per cube."""
        if not self.cluster_layers:
            return
        colors = {None: "transparent", 0: "transparent"}
        colors.update({value: cls.color for value, cls in enumerate(self.mapping.classes, start=1)})
        colormap = DirectLabelColormap(color_dict=colors)
        for cube, labels in self.cluster_maps().items():
            class_map = self.mapping.apply(labels)
            name = classes_layer_name(cube)
            source = next(layer for layer in self.cluster_layers if layer.metadata[layer_keys.CUBE_LAYER] == cube)
            metadata = {
                layer_keys.MAPPING: self.mapping.to_json(),
                layer_keys.CUBE_LAYER: cube,
                layer_keys.RUN: source.metadata[layer_keys.RUN],
                layer_keys.CHECKPOINT: source.metadata.get(layer_keys.CHECKPOINT),
            }
            layer = next((lay for lay in self.viewer.layers if isinstance(lay, Labels) and lay.name == name), None)
            if layer is None:
                self.viewer.add_labels(
                    class_map, name=name, metadata=metadata, colormap=colormap, opacity=0.6,
                    scale=tuple(source.scale), translate=tuple(source.translate),
                )
            else:
                layer.metadata.update(metadata)
                layer.colormap = colormap
                layer.data = class_map

    # ------------------------------------------------------------------ mapping files
    @_guarded
    def save_mapping(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the mapping (it must be complete)."""
        saved = self.mapping.save(path, overwrite=overwrite)
        self.show_status(f"Saved mapping to {saved}.")
        return saved

    @_guarded
    def load_mapping(self, path: str | Path) -> ClassMapping:
        """Load a mapping file (either JSON form) for the current clustering."""
        mapping = ClassMapping.load(path, n_clusters=self.mapping.n_clusters if self.cluster_layers else None)
        self.mapping = mapping
        self._mapping_changed()
        self.show_status(f"Loaded mapping {path}.")
        return mapping

    def _save_mapping_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save class mapping", "merge.json", "JSON (*.json)")
        if path:
            self.save_mapping(path, overwrite=True)  # the dialog asked before replacing

    def _load_mapping_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load class mapping", "", "JSON (*.json)")
        if path:
            self.load_mapping(path)

    # ------------------------------------------------------------------ spectra and clicks
    def _x_axis(self) -> tuple[np.ndarray, str] | None:
        for cube in self.statistics:
            layer = self._cube_layer(cube)
            n_bands = self.statistics[cube].mean.shape[1]
            wavelengths = layer.metadata.get("wavelengths") if layer is not None else None
            if wavelengths is not None and len(wavelengths) == n_bands:
                return np.asarray(wavelengths, dtype=float), "wavelength (nm)"
            return np.arange(n_bands, dtype=float), "band"
        return None

    def _plot(self) -> None:
        axis = self._x_axis()
        if axis is None:
            return
        pooled = ClusterStatistics.pooled(self.statistics.values())
        chosen = self.selected_clusters() or list(range(self.mapping.n_clusters))
        colors = cluster_colors(self.mapping.n_clusters)
        curves = [(k, colors[k], pooled.mean[k], pooled.std[k]) for k in chosen if k < self.mapping.n_clusters]
        pixel = self.pixel if self.pixel is not None and self.pixel[1].size == axis[0].size else None
        self.spectrum_plot.show_spectra(axis[0], axis[1], curves, pixel)

    def _on_click(self, viewer, event) -> None:
        self.describe_pixel(tuple(event.position))

    def describe_pixel(self, world_position: tuple[float, ...]) -> str | None:
        """Show spectrum, cluster and class of the pixel under a world position."""
        for layer in self.cluster_layers:
            row, col = (int(round(v)) for v in layer.world_to_data(world_position[-2:])[-2:])
            rows, cols = layer.data.shape[-2:]
            if not (0 <= row < rows and 0 <= col < cols):
                continue
            cube = layer.metadata[layer_keys.CUBE_LAYER]
            cluster = int(layer.data[row, col]) - int(layer.metadata.get(layer_keys.LABEL_OFFSET, 0))
            owner = self.mapping.class_of_cluster(cluster)
            class_name = "unassigned" if owner is None else self.mapping.classes[owner].name
            text = f"{cube}, row {row}, col {col}: cluster {cluster}, class {class_name}"
            cube_layer = self._cube_layer(cube)
            if cube_layer is not None:
                self.pixel = (f"pixel ({row}, {col})", np.asarray(cube_layer.data[:, row, col], dtype=float))
            self.pixel_label.setText(text)
            self._plot()
            return text
        return None

    # ------------------------------------------------------------------ masks
    def mask_layers(self) -> dict[str, Labels]:
        """Cube name → its mask layer (the selected one when a cube has several)."""
        masks: dict[str, Labels] = {}
        selected = set(self.viewer.layers.selection)
        for layer in self.viewer.layers:
            if is_mask_layer(layer):
                cube = layer.metadata[layer_keys.CUBE_LAYER]
                if cube not in masks or layer in selected:
                    masks[cube] = layer
        return masks

    def masks(self) -> dict[str, Mask]:
        """Cube name → validated mask of every cube that has a mask layer."""
        names = self.mask_classes_edit.text().strip()
        override = parse_legend(names) if names else None
        result = {}
        for cube, layer in self.mask_layers().items():
            legend = override or mask_legend(layer)
            result[cube] = Mask(np.asarray(layer.data), legend=legend, source=f"mask layer {layer.name!r}")
        return result

    def _update_mask_label(self) -> None:
        found = self.mask_layers()
        text = ", ".join(f"{cube} ← {layer.name}" for cube, layer in found.items()) or "none yet"
        self.mask_label.setText(f"Masks: {text}")

    @_guarded
    def new_mask_layer(self, cube: str | None = None) -> Labels:
        """Add an all-background mask layer for a cube, ready to paint tissue (1) with the brush."""
        layers = [layer for layer in self.cluster_layers if cube in (None, layer.metadata[layer_keys.CUBE_LAYER])]
        if not layers:
            raise DGCError("no 'DGC clusters' layer to draw a mask for")
        source = next((layer for layer in layers if layer in self.viewer.layers.selection), layers[0])
        cube = source.metadata[layer_keys.CUBE_LAYER]
        legend = dict(DEFAULT_LEGEND)
        colors = {None: "transparent", 0: "transparent", 255: "#ffffff"}
        colors.update({value: default_class_color(name, value) for value, name in legend.items() if value})
        layer = self.viewer.add_labels(
            np.zeros(source.data.shape, dtype=np.uint8),
            name=mask_layer_name(cube),
            metadata={layer_keys.CUBE_LAYER: cube, "class_names": list(legend.values())},
            colormap=DirectLabelColormap(color_dict=colors),
            opacity=0.5,
            scale=tuple(source.scale),
            translate=tuple(source.translate),
        )
        layer.selected_label = 1
        layer.mode = "paint"
        self.show_status(f"Paint the mask of {cube}: 1 tissue, 2 lesion, 255 ignore; unpainted = background.")
        return layer

    @_guarded
    def import_masks(self, paths: list[str | Path]) -> list[Labels]:
        """Read mask files, match them to cubes by name and add them as mask layers.

        All files are read and checked before any layer is added.
        """
        cubes = {layer.metadata[layer_keys.CUBE_LAYER]: layer for layer in self.cluster_layers}
        matched, unmatched = match_masks(paths, cubes)
        if not matched:
            raise DGCError(f"no mask file name matches a cube ({', '.join(cubes) or 'no cubes'})")
        masks = {cube: read_mask(path, shape=cubes[cube].data.shape) for cube, path in matched.items()}
        added = []
        for cube, mask in masks.items():
            source = cubes[cube]
            colors = {None: "transparent", 0: "transparent", 255: "#ffffff"}
            colors.update({v: default_class_color(n, v) for v, n in mask.legend.items() if v})
            added.append(
                self.viewer.add_labels(
                    mask.values, name=mask_layer_name(cube),
                    metadata={layer_keys.CUBE_LAYER: cube, "class_names": [mask.legend[v] for v in sorted(mask.legend)], layer_keys.MASK_FILE: str(mask.source)},
                    colormap=DirectLabelColormap(color_dict=colors), opacity=0.5,
                    scale=tuple(source.scale), translate=tuple(source.translate),
                )
            )
        note = f"; not matched: {', '.join(Path(p).name for p in unmatched)}" if unmatched else ""
        self.show_status(f"Imported {len(added)} mask(s){note}.")
        return added

    def _import_masks_clicked(self) -> None:
        patterns = " ".join(f"*{suffix}" for suffix in MASK_SUFFIXES)
        paths, _ = QFileDialog.getOpenFileNames(self, "Import masks", "", f"Masks ({patterns})")
        if paths:
            self.import_masks(paths)

    # ------------------------------------------------------------------ IoU
    @_guarded
    def apply_suggestion(self) -> ClassMapping:
        """Replace the mapping by the automatic (Hungarian / many-to-one) suggestion."""
        mapping, method, notes = suggest_mapping(
            self.cluster_maps(), self.masks(), self.mapping.n_clusters, method=self.method_combo.currentText()
        )
        self.mapping = mapping
        self._mapping_changed()
        self.show_status(f"Applied the suggested {method} mapping. " + " ".join(notes))
        return mapping

    @_guarded
    def compute_iou(self) -> EvaluationReport:
        """Score the mapping against the masks; with no cluster assigned yet, score the suggestion."""
        cluster_maps, masks = self.cluster_maps(), self.masks()
        if len(self.mapping.unassigned_clusters()) == self.mapping.n_clusters:
            mapping, method, notes = suggest_mapping(
                cluster_maps, masks, self.mapping.n_clusters, method=self.method_combo.currentText()
            )
            report = evaluate_classes(cluster_maps, masks, mapping, mapping_source=f"suggested ({method})")
            report.notes[:0] = notes
            message = f"No clusters assigned yet: these are the scores of the suggested {method} mapping (press 'Suggest mapping' to use it)."
        else:
            report = evaluate_classes(cluster_maps, masks, self.mapping, mapping_source="panel")
            message = f"Mean IoU (pooled) {report.pooled.mean_iou:.4f}."
        self.report = report
        self._fill_iou_table(report)
        self.show_status(" ".join([message, *report.notes]))
        return report

    def _fill_iou_table(self, report: EvaluationReport) -> None:
        columns = [*report.per_cube.items()] + ([(POOLED, report.pooled)] if len(report.per_cube) > 1 else [])
        table = self.iou_table
        table.clear()
        table.setColumnCount(len(columns))
        table.setRowCount(len(report.class_names) + 1)
        table.setHorizontalHeaderLabels([name for name, _ in columns])
        table.setVerticalHeaderLabels([*report.class_names, "mean IoU"])
        for column, (_, scores) in enumerate(columns):
            for row, value in enumerate([*scores.iou, scores.mean_iou]):
                table.setItem(row, column, QTableWidgetItem("—" if np.isnan(value) else f"{value:.4f}"))
        table.resizeColumnsToContents()
        names = [*report.class_names, "unassigned"]
        width = max(len(n) for n in names) + 2
        lines = ["pooled confusion (rows true, columns predicted)", " " * width + "".join(n.rjust(width) for n in names)]
        for name, row in zip(report.class_names, report.pooled.confusion):
            lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in row))
        self.confusion_label.setText("\n".join(lines))

    @_guarded
    def export_report(self, *, json_path=None, csv_path=None, overwrite: bool = False) -> list[Path]:
        """Write the last IoU report as JSON and/or CSV."""
        if self.report is None:
            raise DGCError("compute the IoU first")
        written = write_report(self.report, json_path=json_path, csv_path=csv_path, overwrite=overwrite)
        self.show_status(f"Wrote {', '.join(map(str, written))}.")
        return written

    def _export_report_clicked(self, suffix: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export IoU", f"iou.{suffix}", f"{suffix.upper()} (*.{suffix})")
        if path:
            self.export_report(**{f"{suffix}_path": path}, overwrite=True)

    # ------------------------------------------------------------------ exports
    @_guarded
    def export_class_maps(self, folder: str | Path, file_format: str = "tif", *, overwrite: bool = False) -> list[Path]:
        """Write every cube's class map as ``<cube>_classes.<format>`` plus legend into ``folder``.

        Nothing is written if any target exists and ``overwrite`` is false.
        """
        folder = Path(folder)
        maps = {cube: self.mapping.apply(labels) for cube, labels in self.cluster_maps().items()}
        targets = {cube: folder / f"{cube}_classes.{file_format}" for cube in maps}
        if not overwrite:
            for target in targets.values():
                for path in (target, target.with_name(target.stem + ".legend.json")):
                    if path.exists():
                        raise FileExistsError(f"{path} exists; refusing to overwrite it")
        written = []
        for cube, class_map in maps.items():
            written += write_class_map(targets[cube], class_map, self.mapping, overwrite=overwrite)
        self.show_status(f"Wrote {len(maps)} class map(s) to {folder}.")
        return written

    def _export_class_maps_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for class maps")
        if not folder:
            return
        written = self.export_class_maps(folder, self.format_combo.currentText())
        if written is None and "exists" in self.status_label.text() and self._confirm_replace(folder):
            self.export_class_maps(folder, self.format_combo.currentText(), overwrite=True)

    @_guarded
    def export_model(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the clustering's checkpoint and the (complete) mapping as a model folder."""
        if not self.cluster_layers:
            raise DGCError("no 'DGC clusters' layer: nothing to export")
        key = self._current_key()
        path = export_model_folder(key[0], folder, self.mapping, checkpoint_id=key[1], overwrite=overwrite)
        self.show_status(f"Wrote model folder {path} (use: napari-dgc segment --classes {path} ...).")
        return path

    def _export_model_clicked(self) -> None:
        folder, _ = QFileDialog.getSaveFileName(self, "Model folder to create", "dgc-model", "Folder (*)")
        if folder:
            # The save dialog asked before naming an existing path.
            self.export_model(folder, overwrite=Path(folder).exists())

    def _confirm_replace(self, where: str) -> bool:
        answer = QMessageBox.question(self, "Replace files?", f"Some files in {where} exist. Replace them?")
        return answer == QMessageBox.Yes
