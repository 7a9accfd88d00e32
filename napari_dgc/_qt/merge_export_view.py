"""The export box of the cluster-merge panel: class maps of every cube, and a model folder."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from napari_dgc._qt.merge_parts import REFUSALS, MergeView
from napari_dgc.state.merge import MergeModel


class MergeExportView(MergeView):
    """Writes the model's class maps (asking before replacing files) or its model folder."""

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Export")
        row = QHBoxLayout(box)
        self.format_combo = QComboBox()
        self.format_combo.addItems(["tif", "png", "npy"])
        class_maps = QPushButton("Class maps…")
        class_maps.clicked.connect(self._class_maps_clicked)
        model_folder = QPushButton("Model folder…")
        model_folder.setToolTip(
            "checkpoint weights + settings + class mapping, for napari-dgc segment --classes"
        )
        model_folder.clicked.connect(self._model_clicked)
        row.addWidget(self.format_combo)
        row.addWidget(class_maps)
        row.addWidget(model_folder)
        layout.addWidget(box)

    def export_class_maps(
        self, folder: str | Path, file_format: str = "tif", *, overwrite: bool = False
    ) -> list[Path] | None:
        """Write the class maps; ``None`` (and :attr:`failed`) if a file exists or writing fails."""
        return self.attempt(self.model.export_class_maps, folder, file_format, overwrite=overwrite)

    def _class_maps_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for class maps")
        if not folder:
            return
        file_format = self.format_combo.currentText()
        try:
            self.model.export_class_maps(folder, file_format)
        except FileExistsError as error:
            if self._confirm_replace(folder):
                self.export_class_maps(folder, file_format, overwrite=True)
            else:
                self.failed.emit(str(error))
        except REFUSALS as error:
            self.failed.emit(str(error))

    def _model_clicked(self) -> None:
        folder, _ = QFileDialog.getSaveFileName(self, "Model folder to create", "dgc-model", "Folder (*)")
        if folder:
            # The save dialog asked before naming an existing path.
            self.attempt(self.model.export_model, folder, overwrite=Path(folder).exists())

    def _confirm_replace(self, where: str) -> bool:
        answer = QMessageBox.question(self, "Replace files?", f"Some files in {where} exist. Replace them?")
        return answer == QMessageBox.Yes
