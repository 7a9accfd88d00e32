"""The IoU box of the cluster-merge panel: suggested mapping, scores, confusion matrix, report export."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_dgc._qt.merge_parts import MergeView, show_rows
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.evaluation import POOLED, SUGGESTION_METHODS, EvaluationReport
from napari_dgc.state.merge import MergeModel


class MergeIouView(MergeView):
    """Suggests and scores mappings, and shows the model's last IoU report.

    The report: IoU per class and cube (pooled too for several cubes) and the pooled
    confusion matrix.
    """

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("IoU")
        grid = QGridLayout(box)
        self.method_combo = QComboBox()
        self.method_combo.addItems(SUGGESTION_METHODS)
        self.method_combo.setToolTip("automatic mapping: Hungarian (one-to-one) or many-to-one")
        suggest = QPushButton("Suggest mapping")
        suggest.clicked.connect(lambda: self.apply_suggestion())
        compute = QPushButton("Compute IoU")
        compute.clicked.connect(lambda: self.compute_iou())
        grid.addWidget(self.method_combo, 0, 0)
        grid.addWidget(suggest, 0, 1)
        grid.addWidget(compute, 0, 2)
        self.table = QTableWidget()
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        show_rows(self.table)  # header, the classes and the mean stay readable in a short dock
        grid.addWidget(self.table, 1, 0, 1, 3)
        self.confusion_label = QLabel()
        self.confusion_label.setFont(QFont("monospace", 8))
        self.confusion_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        grid.addWidget(self.confusion_label, 2, 0, 1, 3)
        for column, suffix in enumerate(("csv", "json")):
            button = QPushButton(f"Export {suffix.upper()}…")
            button.clicked.connect(functools.partial(self._export_clicked, suffix))
            grid.addWidget(button, 3, column)
        layout.addWidget(box)
        model.report_changed.connect(self._render)

    def apply_suggestion(self) -> ClassMapping | None:
        """Adopt the suggested mapping of the chosen method; ``None`` (and :attr:`failed`) on bad masks."""
        return self.attempt(self.model.apply_suggestion, self.method_combo.currentText())

    def compute_iou(self) -> EvaluationReport | None:
        """Score the mapping (or the suggestion); ``None`` (and :attr:`failed`) on bad masks."""
        return self.attempt(self.model.compute_iou, self.method_combo.currentText())

    def _export_clicked(self, suffix: str) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export IoU", f"iou.{suffix}", f"{suffix.upper()} (*.{suffix})"
        )
        if path:
            # The dialog asked before replacing.
            self.attempt(self.model.export_report, **{f"{suffix}_path": Path(path)}, overwrite=True)

    def _render(self) -> None:
        report = self.model.report
        columns = [*report.per_cube.items()] + ([(POOLED, report.pooled)] if len(report.per_cube) > 1 else [])
        table = self.table
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
        lines = [
            "pooled confusion (rows true, columns predicted)",
            " " * width + "".join(n.rjust(width) for n in names),
        ]
        for name, row in zip(report.class_names, report.pooled.confusion):
            lines.append(name.ljust(width) + "".join(str(v).rjust(width) for v in row))
        self.confusion_label.setText("\n".join(lines))
