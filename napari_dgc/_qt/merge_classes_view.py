"""The classes box of the merge panel: list, add, remove, rename, recolour, assign, undo; mapping files."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_dgc._qt.merge_parts import ClassListWidget, MergeView, swatch
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.state.merge import MergeModel


class MergeClassesView(MergeView):
    """The model's classes as an editable list, with the buttons that change the mapping.

    Clusters dropped on a class (from the cluster table) are the model's selected clusters.
    **Undo**/**Redo** walk the model's mapping history (the panel also binds Ctrl+Z and
    Ctrl+Shift+Z to them).
    """

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Classes (double-click to rename; drop clusters here)")
        grid = QGridLayout(box)
        self.class_list = ClassListWidget()
        self.class_list.setMaximumHeight(110)
        self.class_list.itemChanged.connect(self._on_renamed)
        self.class_list.clusters_dropped.connect(lambda row: self.attempt(model.assign_selected, row))
        grid.addWidget(self.class_list, 0, 0, 4, 1)
        buttons = (
            ("Add class", self._add_clicked),
            ("Remove", lambda: self.attempt(model.remove_class, self.class_list.currentRow())),
            ("Colour…", self._color_clicked),
            ("Unassign", lambda: self.attempt(model.assign_selected, None)),
        )
        for row, (text, slot) in enumerate(buttons):
            button = QPushButton(text)
            button.clicked.connect(slot)
            grid.addWidget(button, row, 1)
        self.assign_button = QPushButton("Assign selected clusters to class ▸")
        self.assign_button.clicked.connect(
            lambda: self.attempt(model.assign_selected, self.class_list.currentRow())
        )
        grid.addWidget(self.assign_button, 4, 0, 1, 2)
        files = QHBoxLayout()
        self.undo_button, self.redo_button = QPushButton("Undo"), QPushButton("Redo")
        self.undo_button.setToolTip("Undo the last change of the classes (Ctrl+Z)")
        self.redo_button.setToolTip("Redo what was undone (Ctrl+Shift+Z)")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        files.addWidget(self.undo_button)
        files.addWidget(self.redo_button)
        for text, slot in (("Load mapping…", self._load_clicked), ("Save mapping…", self._save_clicked)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            files.addWidget(button)
        grid.addLayout(files, 5, 0, 1, 2)
        layout.addWidget(box)
        model.mapping_changed.connect(self._render)
        model.history_changed.connect(self._render_history)
        self._render()
        self._render_history()

    def undo(self) -> None:
        """Undo the last mapping change (:meth:`MergeModel.undo`); refused quietly when there is none."""
        if self.model.can_undo:
            self.attempt(self.model.undo)

    def redo(self) -> None:
        """Redo the last undone change (:meth:`MergeModel.redo`); refused quietly when there is none."""
        if self.model.can_redo:
            self.attempt(self.model.redo)

    def _render_history(self) -> None:
        self.undo_button.setEnabled(self.model.can_undo)
        self.redo_button.setEnabled(self.model.can_redo)

    def _render(self) -> None:
        """Show the model's classes, keeping the current row where it still exists."""
        current = self.class_list.currentRow()
        classes = self.model.mapping.classes
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for cls in classes:
            item = QListWidgetItem(swatch(cls.color), cls.name)
            item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.class_list.addItem(item)
        self.class_list.setCurrentRow(min(max(current, 0), len(classes) - 1))
        self.class_list.blockSignals(False)

    def _add_clicked(self) -> None:
        index = self.attempt(self.model.add_class)
        if index is not None:
            self.class_list.setCurrentRow(index)

    def _on_renamed(self, item: QListWidgetItem) -> None:
        if self.attempt(self.model.rename_class, self.class_list.row(item), item.text()) is None:
            self._render()  # the refused name is still in the list's editor text

    def _color_clicked(self) -> None:
        row = self.class_list.currentRow()
        if not 0 <= row < len(self.model.mapping.classes):
            return
        color = QColorDialog.getColor(QColor(self.model.mapping.classes[row].color), self, "Class colour")
        if color.isValid():
            self.attempt(self.model.set_class_color, row, color.name())

    def save_mapping(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the mapping; ``None`` (and :attr:`failed`) if it is incomplete or the file exists."""
        return self.attempt(self.model.save_mapping, path, overwrite=overwrite)

    def load_mapping(self, path: str | Path) -> ClassMapping | None:
        """Load a mapping file; ``None`` (and :attr:`failed`) if it does not fit the clusters."""
        return self.attempt(self.model.load_mapping, path)

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save class mapping", "merge.json", "JSON (*.json)")
        if path:
            self.save_mapping(path, overwrite=True)  # the dialog asked before replacing

    def _load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load class mapping", "", "JSON (*.json)")
        if path:
            self.load_mapping(path)
