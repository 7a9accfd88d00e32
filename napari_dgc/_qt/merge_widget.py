"""The "DGC: Cluster merge" panel: merge learned clusters into named classes, score them, export.

The panel's state and operations live in :class:`~napari_dgc.state.merge.MergeModel`; this
module composes the views of that model (one per file, ``merge_*_view.py``) and wires napari
layers to it (:mod:`napari_dgc._qt.merge_layers`):

* the "DGC clusters [<cube>]" Labels layers of the train panel, grouped by run and
  checkpoint, become the model's clustering (with their cubes' image layers, for the
  statistics and spectra);
* mask layers (painted, rasterised from a Shapes layer, imported, or the synthetic sample's
  ground truth) become its masks;
* every change of the mapping is shown as one "DGC classes [<cube>]" Labels layer per cube;
* a click on the canvas picks the pixel under it;
* Ctrl+Z / Ctrl+Shift+Z, while the panel has the focus, undo and redo mapping changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from napari.layers import Labels, Shapes
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QShortcut,
    QVBoxLayout,
    QWidget,
)

from napari_dgc import layer_metadata as layer_keys
from napari_dgc._qt.band_wavelength import follow_band_wavelength
from napari_dgc._qt.merge_classes_view import MergeClassesView
from napari_dgc._qt.merge_clusters_view import MergeClustersView
from napari_dgc._qt.merge_export_view import MergeExportView
from napari_dgc._qt.merge_granularity_view import MergeGranularityView
from napari_dgc._qt.merge_iou_view import MergeIouView
from napari_dgc._qt.merge_layers import (
    ClusteringKey,
    add_mask_layer,
    classes_layer_name,
    cluster_groups,
    clustering_of,
    drawn_shapes,
    mask_colormap,
    mask_inputs,
    mask_layer_name,
    show_classes,
)
from napari_dgc._qt.merge_masks_view import MergeMasksView
from napari_dgc._qt.merge_parts import REFUSALS, MergeView
from napari_dgc._qt.merge_spectra_view import MergeSpectraView
from napari_dgc.analysis.masks import IGNORE_VALUE, parse_legend
from napari_dgc.errors import MaskError
from napari_dgc.state.merge import MergeModel

__all__ = ["MergeWidget", "classes_layer_name", "mask_layer_name"]

_ERROR_STYLE = "color: #e05050;"


def _follow_data(old: list[Labels], new: list[Labels], callback: Callable) -> list[Labels]:
    """Call ``callback`` when the data of a layer of ``new`` is replaced, no longer for ``old``."""
    if [id(layer) for layer in old] == [id(layer) for layer in new]:
        return new  # also keeps a callback that is running from being reconnected
    for layer in old:
        layer.events.data.disconnect(callback)
    for layer in new:
        layer.events.data.connect(callback)
    return new


class MergeWidget(MergeView):
    """Cluster-merge, mask and IoU panel (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers the panel reads and adds.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(MergeModel())
        self.viewer = napari_viewer
        #: The cluster layers of the model's clustering.
        self.cluster_layers: list[Labels] = []
        self._mask_layers: list[Labels] = []
        self._group_keys: list[ClusteringKey] = []
        self._build_ui()
        self.model.message.connect(self.show_status)
        self.model.mapping_changed.connect(self.update_classes_layers)
        self.model.ground_truth.changed.connect(self._recolour_masks)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.changed.connect(self._load_masks)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(self._disconnect)
        follow_band_wavelength(self.viewer)  # the band slider gives only an index
        self.refresh_layers()

    def _build_ui(self) -> None:
        # The views scroll (a short dock, or one under other docks, never grows the window);
        # the clustering chooser and the status line stay in sight.
        outer = QVBoxLayout(self)
        top = QHBoxLayout()
        self.clustering_combo = QComboBox()
        self.clustering_combo.currentIndexChanged.connect(lambda _: self._load_clustering())
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_layers)
        top.addWidget(QLabel("Clusters:"))
        top.addWidget(self.clustering_combo, 1)
        top.addWidget(refresh)
        outer.addLayout(top)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)

        model = self.model
        self.classes_view = MergeClassesView(model)
        self.granularity_view = MergeGranularityView(model)
        self.clusters_view = MergeClustersView(model)
        self.spectra_view = MergeSpectraView(model)
        self.masks_view = MergeMasksView(model)
        self.iou_view = MergeIouView(model)
        self.export_view = MergeExportView(model)
        views = (
            self.classes_view,
            self.granularity_view,
            self.clusters_view,
            self.spectra_view,
            self.masks_view,
            self.iou_view,
            self.export_view,
        )
        for view in views:
            layout.addWidget(view, 1 if view is self.clusters_view else 0)
            view.failed.connect(self._show_error)
        self.failed.connect(self._show_error)
        self.masks_view.new_mask_requested.connect(lambda: self.new_mask_layer())
        self.masks_view.shapes_requested.connect(lambda: self.mask_from_shapes())
        # Only while the panel has the focus: napari's own Ctrl+Z undoes label painting.
        for keys, slot in (("Ctrl+Z", self.classes_view.undo), ("Ctrl+Shift+Z", self.classes_view.redo)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.WidgetWithChildrenShortcut)
            shortcut.activated.connect(slot)
        self.masks_view.import_requested.connect(self.import_masks)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        outer.addWidget(self.status_label)

    def show_status(self, message: str, *, error: bool = False) -> None:
        """Show a message (errors in red) at the bottom of the panel."""
        self.status_label.setStyleSheet(_ERROR_STYLE if error else "")
        self.status_label.setText(message)

    def _show_error(self, message: str) -> None:
        self.show_status(message, error=True)

    def _disconnect(self) -> None:
        """Stop following the viewer once the panel is gone."""
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
        self.viewer.layers.events.removed.disconnect(self._on_layers_changed)
        self.viewer.layers.selection.events.changed.disconnect(self._load_masks)

    # ------------------------------------------------------------------ layers → model
    def _on_layers_changed(self, event=None) -> None:
        self.refresh_layers()

    def refresh_layers(self) -> None:
        """Re-read the viewer's cluster and mask layers (keeps the chosen clustering)."""
        groups = cluster_groups(self.viewer)
        current = self._current_key()
        keys = list(groups)
        self.clustering_combo.blockSignals(True)
        self.clustering_combo.clear()
        for run, checkpoint, k in keys:
            count = len(groups[(run, checkpoint, k)])
            self.clustering_combo.addItem(
                f"{Path(run).name} @ {checkpoint} (K={k}, {count} cube{'s' * (count != 1)})"
            )
        self._group_keys = keys
        if current in keys:
            self.clustering_combo.setCurrentIndex(keys.index(current))
        self.clustering_combo.blockSignals(False)
        new_layers = groups.get(self._current_key(), [])
        if [id(layer) for layer in new_layers] != [id(layer) for layer in self.cluster_layers]:
            self._load_clustering()
        self._load_masks()

    def _current_key(self) -> ClusteringKey | None:
        index = self.clustering_combo.currentIndex()
        return self._group_keys[index] if 0 <= index < len(self._group_keys) else None

    def _load_clustering(self, event=None) -> None:
        """Hand the chosen clustering's layers to the model (again, after their data changed)."""
        key = self._current_key()
        layers = cluster_groups(self.viewer).get(key, []) if key is not None else []
        previous = self.cluster_layers
        self.cluster_layers = _follow_data(previous, layers, self._load_clustering)
        try:
            self.model.set_clustering(clustering_of(self.viewer, key, layers) if layers else None)
        except REFUSALS as error:
            # The model keeps its clustering; so do the class layers and the pixel picking.
            self.cluster_layers = _follow_data(layers, previous, self._load_clustering)
            self.failed.emit(str(error))

    def _load_masks(self, event=None) -> None:
        masks, layers = mask_inputs(self.viewer)
        self._mask_layers = _follow_data(self._mask_layers, layers, self._load_masks)
        self.model.ground_truth.set(masks)

    def _recolour_masks(self) -> None:
        """Colour the mask layers by the typed mask class names, which name their values for scoring."""
        names = self.model.ground_truth.class_names.strip()
        try:
            legend = parse_legend(names) if names else None
        except MaskError:
            return  # reported when the masks are used
        if legend is not None:
            for layer in self._mask_layers:
                layer.colormap = mask_colormap(legend)

    def _on_click(self, viewer, event) -> None:
        self.describe_pixel(tuple(event.position))

    def describe_pixel(self, world_position: tuple[float, ...]) -> str | None:
        """Pick the pixel under a world position: its cube, cluster, class and spectrum."""
        for layer in self.cluster_layers:
            row, col = (int(round(v)) for v in layer.world_to_data(world_position[-2:])[-2:])
            rows, cols = layer.data.shape[-2:]
            if 0 <= row < rows and 0 <= col < cols:
                return self.model.pick_pixel(layer.metadata[layer_keys.CUBE_LAYER], row, col)
        return None

    # ------------------------------------------------------------------ model → layers
    def update_classes_layers(self) -> None:
        """Show the current mapping as one "DGC classes [<cube>]" layer per cube."""
        if self.cluster_layers:
            show_classes(self.viewer, self.model.mapping, self.model.cluster_maps, self.cluster_layers)

    def _mask_source(self, cube: str | None) -> Labels | None:
        """The cluster layer a new mask of ``cube`` is placed like.

        Without ``cube``: the selected cluster layer, else the first. ``None`` (and
        :attr:`failed`) if there is no cluster layer to draw on.
        """
        layers = [
            layer for layer in self.cluster_layers if cube in (None, layer.metadata[layer_keys.CUBE_LAYER])
        ]
        if not layers:
            self.failed.emit("no 'DGC clusters' layer to draw a mask for")
            return None
        return next((layer for layer in layers if layer in self.viewer.layers.selection), layers[0])

    def new_mask_layer(self, cube: str | None = None) -> Labels | None:
        """Add an empty mask layer for a cube, ready to paint value 1 with the brush.

        Its values are named by :meth:`MergeModel.new_mask_legend` (the mask class names field,
        else the masks there are, else background / tissue / lesion). Without ``cube``: the
        cube of the selected cluster layer, else the first. ``None`` (and :attr:`failed`) if
        there is no cluster layer to draw on or the class names are malformed.
        """
        source = self._mask_source(cube)
        legend = self.attempt(self.model.new_mask_legend) if source is not None else None
        if legend is None:
            return None
        cube = source.metadata[layer_keys.CUBE_LAYER]
        # 0 where the legend names it (background), else "ignore": unpainted pixels are no class.
        blank = 0 if 0 in legend else IGNORE_VALUE
        values = np.full(source.data.shape, blank, dtype=np.uint8)
        layer = add_mask_layer(self.viewer, values, legend, cube, source)
        layer.selected_label = min((v for v in legend if v != blank), default=1)
        layer.mode = "paint"
        classes = ", ".join(f"{value} {name}" for value, name in sorted(legend.items()) if value != blank)
        unpainted = legend[0] if blank == 0 else "ignore"
        self.show_status(f"Paint the mask of {cube}: {classes}, 255 ignore; unpainted = {unpainted}.")
        return layer

    def mask_from_shapes(self, shapes_layer: Shapes | None = None, cube: str | None = None) -> Labels | None:
        """Rasterise a Shapes layer's polygons, rectangles and ellipses into a mask layer.

        Parameters
        ----------
        shapes_layer : napari.layers.Shapes, optional
            Default: the selected Shapes layer, else the topmost one.
        cube : str, optional
            The cube the mask is for. Default: the layer's ``metadata["dgc_cube_layer"]``, else
            the cube of the selected cluster layer, else the first.

        Returns
        -------
        napari.layers.Labels or None
            The mask layer; ``None`` (and :attr:`failed`) without a Shapes or cluster layer, or
            for shapes that cannot be rasterised (see :meth:`MergeModel.mask_from_shapes`).
        """
        if shapes_layer is None:
            candidates = [layer for layer in self.viewer.layers if isinstance(layer, Shapes)]
            selected = self.viewer.layers.selection.active
            shapes_layer = (
                selected if isinstance(selected, Shapes) else (candidates[-1] if candidates else None)
            )
        if shapes_layer is None:
            self.failed.emit("no Shapes layer: add one and draw polygons or rectangles over the cube first")
            return None
        source = self._mask_source(cube or shapes_layer.metadata.get(layer_keys.CUBE_LAYER))
        if source is None:
            return None
        cube = source.metadata[layer_keys.CUBE_LAYER]
        mask = self.attempt(
            self.model.mask_from_shapes, cube, drawn_shapes(shapes_layer, source), shapes_layer.name
        )
        if mask is None:
            return None
        layer = add_mask_layer(self.viewer, mask.values, mask.legend, cube, source)
        self.show_status(f"Mask of {cube} from {len(shapes_layer.data)} shape(s) of {shapes_layer.name!r}.")
        return layer

    def import_masks(self, paths: list[str | Path]) -> list[Labels] | None:
        """Read mask files, match them to cubes by name and add them as mask layers.

        All files are read and checked before any layer is added; ``None`` (and
        :attr:`failed`) if one is refused.
        """
        read = self.attempt(self.model.read_masks, paths)
        if read is None:
            return None
        masks, unmatched = read
        sources = {layer.metadata[layer_keys.CUBE_LAYER]: layer for layer in self.cluster_layers}
        added = [
            add_mask_layer(
                self.viewer,
                mask.values,
                mask.legend,
                cube,
                sources[cube],
                mask_file=mask.source,
                colors=mask.colors,
            )
            for cube, mask in masks.items()
        ]
        note = f"; not matched: {', '.join(Path(p).name for p in unmatched)}" if unmatched else ""
        self.show_status(f"Imported {len(added)} mask(s){note}.")
        return added
