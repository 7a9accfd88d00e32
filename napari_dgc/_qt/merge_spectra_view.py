"""The spectra of the cluster-merge panel: cluster means ± std and the last clicked pixel."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QLabel, QPushButton, QVBoxLayout

from napari_dgc._qt.cube_layers import cluster_colors
from napari_dgc._qt.merge_parts import MergeView, SpectrumPlot
from napari_dgc.analysis.export import write_spectra_csv
from napari_dgc.state.merge import MergeModel, MergeStateError


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
        self.export_button = QPushButton("Export spectra CSV…")
        self.export_button.setToolTip(
            "Mean ± std spectrum of every cluster and class, per band with its wavelength "
            "(the CSV of napari-dgc spectra)"
        )
        self.export_button.clicked.connect(self._export_clicked)
        layout.addWidget(self.export_button)
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

    def export_csv(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Write the spectra pooled over the cubes as ``napari-dgc spectra`` does (same engine
        function, same columns, wavelengths where known); ``None`` (and :attr:`failed`) if refused.
        """
        return self.attempt(self._write_csv, Path(path), overwrite)

    def _write_csv(self, path: Path, overwrite: bool) -> Path:
        model = self.model
        axis, statistics = model.spectral_axis(), model.pooled_statistics()
        if axis is None or statistics is None:
            raise MergeStateError("no spectra yet: show the clusters of a checkpoint with their cubes first")
        wavelengths = axis[0] if axis[1].startswith("wavelength") else None
        mapping = model.mapping if model.mapping.n_clusters == len(statistics.counts) else None
        written = write_spectra_csv(path, statistics, wavelengths, mapping, overwrite=overwrite)
        model.message.emit(f"Wrote spectra to {written}.")
        return written

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export spectra", "spectra.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path, overwrite=True)  # the save dialog asked before replacing
