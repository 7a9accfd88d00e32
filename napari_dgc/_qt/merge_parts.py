"""Building blocks of the cluster-merge panel's views.

Their base class, the class list (a drop target) and the spectrum plot (pyqtgraph).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QFont, QIcon, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QSizePolicy, QTableWidget, QWidget

from napari_dgc.errors import DGCError
from napari_dgc.state.merge import MergeModel

T = TypeVar("T")

#: What a refused operation raises: bad input, or the file system (a file exists, a disk is full).
REFUSALS = (DGCError, OSError)


def swatch(color: str, size: int = 12) -> QIcon:
    """Make a square icon filled with ``color``."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(color))
    return QIcon(pixmap)


#: Rows a table of the panel shows at least, however short the dock.
MIN_TABLE_ROWS = 5


def show_rows(table: QTableWidget, rows: int = MIN_TABLE_ROWS) -> None:
    """Make ``table`` at least tall enough for its header and ``rows`` rows (and a scroll bar)."""
    header = table.horizontalHeader().sizeHint().height()
    row = table.verticalHeader().defaultSectionSize()
    scroll_bar = table.horizontalScrollBar().sizeHint().height()
    table.setMinimumHeight(header + rows * row + scroll_bar + 2 * table.frameWidth())


class MergeView(QWidget):
    """Base of the merge panel's views: a widget rendering a :class:`MergeModel`.

    Views change the model only through its methods and learn of changes only from its
    signals. An operation refused for bad input is reported through :attr:`failed`, which the
    panel shows; views never show each other anything.

    Parameters
    ----------
    model : MergeModel
        The merge this view shows.
    parent : QWidget, optional
        Qt parent.
    """

    #: The message of an operation refused for bad input (or a file-system error).
    failed = Signal(str)

    def __init__(self, model: MergeModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model

    def attempt(self, operation: Callable[..., T], *args, **kwargs) -> T | None:
        """Run ``operation``; on bad input emit :attr:`failed` and return ``None``."""
        try:
            return operation(*args, **kwargs)
        except REFUSALS as error:
            self.failed.emit(str(error))
            return None


class ClassListWidget(QListWidget):
    """List of semantic classes that clusters can be dropped on.

    Dropping clusters (dragged from the cluster table) on a class emits
    :attr:`clusters_dropped` with the class's row.
    """

    clusters_dropped = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DropOnly)
        self.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)

    def dragEnterEvent(self, event) -> None:
        event.acceptProposedAction() if event.source() is not self else event.ignore()

    def dragMoveEvent(self, event) -> None:
        item = self.itemAt(event.pos())
        event.acceptProposedAction() if item is not None else event.ignore()

    def dropEvent(self, event) -> None:
        item = self.itemAt(event.pos())
        if item is None:
            event.ignore()
            return
        # The table keeps its rows: the dragged clusters are the model's selection.
        event.setDropAction(Qt.CopyAction)
        event.accept()
        self.clusters_dropped.emit(self.row(item))


class SpectrumPlot(pg.PlotWidget):
    """Mean spectrum ± one standard deviation of chosen clusters, plus one clicked pixel."""

    def __init__(self, parent: QWidget | None = None) -> None:
        # White like the figures in the docs; the clicked pixel is drawn in black.
        super().__init__(parent, background="w")
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        # pyqtgraph asks for 480 px: in the panel's scroll area that pushed masks and IoU a
        # screen down. 240 px keep the curves readable.
        self.setMinimumHeight(200)
        self.setMaximumHeight(240)
        self.setMenuEnabled(False)
        tick_font = QFont()
        tick_font.setPointSize(7)
        for side in ("left", "bottom"):
            axis = self.getAxis(side)
            axis.setPen("k")
            axis.setTextPen("k")
            axis.setStyle(tickFont=tick_font)
            axis.enableAutoSIPrefix(False)  # reflectances would read "(x0.001)"
        self.setLabel("left", "value (mean ± std)", **{"font-size": "8pt"})
        self.legend = self.addLegend(offset=(-5, 5), labelTextSize="7pt", labelTextColor="k", colCount=2)
        #: Clusters drawn by the last :meth:`show_spectra` (empty clusters have no spectrum).
        self.plotted_clusters: list[int] = []

    def show_spectra(
        self,
        x: np.ndarray,
        x_label: str,
        curves: list[tuple[int, str, np.ndarray, np.ndarray]],
        pixel: tuple[str, np.ndarray] | None = None,
    ) -> None:
        """Draw ``(cluster, colour, mean, std)`` curves and an optional ``(label, spectrum)``."""
        self.clear()
        self.legend.clear()
        self.plotted_clusters = []
        for cluster, color, mean, std in curves:
            if np.isnan(mean).all():
                continue
            band = QColor(color)
            band.setAlpha(50)
            # Bare curves: a PlotDataItem without a pen has no path to fill between.
            lower = pg.PlotCurveItem(x, mean - std, pen=None)
            upper = pg.PlotCurveItem(x, mean + std, pen=None)
            self.addItem(pg.FillBetweenItem(lower, upper, brush=band))
            self.plot(x, mean, pen=pg.mkPen(color, width=1.2), name=f"cluster {cluster}")
            self.plotted_clusters.append(cluster)
        if pixel is not None:
            self.plot(x, pixel[1], pen=pg.mkPen("k", width=1.0, style=Qt.DashLine), name=pixel[0])
        self.setLabel("bottom", x_label, **{"font-size": "8pt"})
