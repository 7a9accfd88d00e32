"""Helper widgets of the cluster-merge panel: the class list (a drop target) and the spectrum plot."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QSizePolicy, QVBoxLayout, QWidget


def swatch(color: str, size: int = 12) -> QIcon:
    """A square icon filled with ``color``."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(color))
    return QIcon(pixmap)


class ClassListWidget(QListWidget):
    """List of semantic classes; dropping clusters (dragged from the cluster table) on a class
    emits :attr:`clusters_dropped` with the class's row."""

    clusters_dropped = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DropOnly)
        self.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        event.acceptProposedAction() if event.source() is not self else event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        item = self.itemAt(event.pos())
        event.acceptProposedAction() if item is not None else event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        item = self.itemAt(event.pos())
        if item is None:
            event.ignore()
            return
        # The table keeps its rows; the panel reads the dragged (selected) clusters itself.
        event.setDropAction(Qt.CopyAction)
        event.accept()
        self.clusters_dropped.emit(self.row(item))


class SpectrumPlot(QWidget):
    """Mean spectrum ± one standard deviation of chosen clusters, plus one clicked pixel."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.canvas.setMinimumHeight(200)
        self.axes = self.figure.add_subplot(111)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.plotted_clusters: list[int] = []

    def show_spectra(
        self,
        x: np.ndarray,
        x_label: str,
        curves: list[tuple[int, str, np.ndarray, np.ndarray]],
        pixel: tuple[str, np.ndarray] | None = None,
    ) -> None:
        """Draw ``(cluster, colour, mean, std)`` curves and an optional ``(label, spectrum)``."""
        axes = self.axes
        axes.clear()
        for cluster, color, mean, std in curves:
            if np.isnan(mean).all():
                continue
            axes.plot(x, mean, color=color, linewidth=1.2, label=f"cluster {cluster}")
            axes.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        if pixel is not None:
            axes.plot(x, pixel[1], color="black", linestyle="--", linewidth=1.0, label=pixel[0])
        self.plotted_clusters = [c for c, _, mean, _ in curves if not np.isnan(mean).all()]
        axes.set_xlabel(x_label, fontsize=8)
        axes.set_ylabel("value (mean ± std)", fontsize=8)
        axes.tick_params(labelsize=7)
        if axes.lines:
            axes.legend(fontsize=7, loc="best", ncol=2)
        self.canvas.draw_idle()
