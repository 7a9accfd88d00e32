"""The spectra of the cluster-merge panel: cluster means ± std and the last clicked pixel."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QVBoxLayout

from napari_dgc._qt.cube_layers import cluster_colors
from napari_dgc._qt.merge_parts import MergeView, SpectrumPlot
from napari_dgc.state.merge import MergeModel


class MergeSpectraView(MergeView):
    """Mean spectrum ± one standard deviation of the selected clusters, and the clicked pixel.

    All clusters are drawn when none is selected; spectra are pooled over the cubes. The
    clicked pixel's spectrum is drawn dashed and described below the plot.
    """

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plot = SpectrumPlot()
        layout.addWidget(self.plot)
        self.pixel_label = QLabel("Click a pixel to see its spectrum, cluster and class.")
        self.pixel_label.setWordWrap(True)
        layout.addWidget(self.pixel_label)
        for signal in (model.statistics_changed, model.mapping_changed, model.selection_changed):
            signal.connect(self._render)
        model.pixel_changed.connect(self._on_pixel)
        self._render()

    def _on_pixel(self, text: str) -> None:
        self.pixel_label.setText(text)
        self._render()

    def _render(self) -> None:
        model = self.model
        axis, pooled = model.spectral_axis(), model.pooled_statistics()
        if axis is None or pooled is None:
            return
        k = model.n_clusters
        colors = cluster_colors(k)
        chosen = model.selected_clusters or range(k)
        curves = [(c, colors[c], pooled.mean[c], pooled.std[c]) for c in chosen if c < k]
        pixel = model.pixel if model.pixel is not None and model.pixel[1].size == axis[0].size else None
        self.plot.show_spectra(axis[0], axis[1], curves, pixel)
