"""The train panel's list of cube layers to train on, with the band axis of plain image layers."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
)

from .cube_layers import CubeSource, cube_source, is_cube_layer, is_reader_cube


class CubeLayerList(QGroupBox):
    """Tickable list of the viewer's cube layers, kept up to date as layers come and go.

    Reader layers (and layers with wavelengths) are ticked by default; any other 3-D image
    layer waits until the user confirms where its bands are.

    Parameters
    ----------
    viewer : napari.Viewer
        Whose layers are listed.

    Signals
    -------
    ticks_changed()
        The ticked layers (or the list) changed.
    """

    ticks_changed = Signal()

    def __init__(self, viewer, parent=None) -> None:
        super().__init__("Cube layers to train on", parent)
        self.viewer = viewer
        layout = QVBoxLayout(self)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(72)
        self.layer_list.itemChanged.connect(lambda _item: self.ticks_changed.emit())
        layout.addWidget(self.layer_list)
        axis_row = QHBoxLayout()
        axis_row.addWidget(QLabel("Band axis (other layers):"))
        self.band_axis_combo = QComboBox()
        self.band_axis_combo.addItem("first (bands, rows, cols)", 0)
        self.band_axis_combo.addItem("last (rows, cols, bands)", 2)
        self.band_axis_combo.setToolTip(
            "Layers opened by the napari-dgc reader are band-first; for any other 3-D image "
            "layer, confirm where its bands are before ticking it"
        )
        axis_row.addWidget(self.band_axis_combo, 1)
        layout.addLayout(axis_row)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        self.refresh()

    def refresh(self, *_event) -> None:
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
            item = QListWidgetItem(layer.name if known_cube else f"{layer.name}  (band axis: see below)")
            item.setData(Qt.UserRole, key)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(ticked.get(key, Qt.Checked if known_cube else Qt.Unchecked))
            self.layer_list.addItem(item)
        self.layer_list.blockSignals(False)
        self.ticks_changed.emit()

    def select(self, names: list[str]) -> None:
        """Tick exactly the cube layers called ``names``."""
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            layer = self._layer_by_key(item.data(Qt.UserRole))
            item.setCheckState(Qt.Checked if layer is not None and layer.name in names else Qt.Unchecked)

    def any_ticked(self) -> bool:
        """Whether at least one layer is ticked."""
        return any(self.layer_list.item(i).checkState() == Qt.Checked for i in range(self.layer_list.count()))

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

    def _layer_by_key(self, key: str):
        return next((layer for layer in self.viewer.layers if str(layer.unique_id) == key), None)
