"""Small line plots drawn with QPainter (1-3 ms per repaint, up to 100 000 points per series).

Matplotlib would take tens of milliseconds per redraw on the GUI thread; these plots only
draw polylines, so live loss curves stay cheap even at 10 redraws a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, QSize, Qt, Signal
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QGridLayout, QSizePolicy, QWidget

_Y_LABEL_WIDTH = 34

#: Line colours (matplotlib's "tab10"), readable on napari's dark and light themes.
SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def _decimate(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and max of each of ``max_points // 2`` buckets, so spikes stay visible.

    Vectorised (no Python loop over buckets): the plots redraw ten times a second on the GUI
    thread and a training history grows to thousands of steps. An all-NaN bucket keeps one
    NaN, so gaps stay gaps.
    """
    if x.size <= max_points:
        return x, y
    per_bucket = -(-x.size // max(1, max_points // 2))
    padded = np.full(-(-x.size // per_bucket) * per_bucket, np.nan)
    padded[: x.size] = y
    buckets = padded.reshape(-1, per_bucket)
    finite = np.isfinite(buckets)
    lowest = np.where(finite, buckets, np.inf).argmin(axis=1)
    highest = np.where(finite, buckets, -np.inf).argmax(axis=1)
    # Padding is NaN, so it is only picked (offset 0, inside x) in an all-NaN bucket.
    index = np.stack([np.minimum(lowest, highest), np.maximum(lowest, highest)], axis=1)
    index = (index + per_bucket * np.arange(len(buckets))[:, None]).ravel()
    return x[index], y[index]


def short_number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, thousands and millions as ``k`` / ``M``
    (``60200`` -> ``"60.2k"``), so large figures fit the plots' narrow labels."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            # All integer digits, so 120 000 is "120k", never "1.2e+02k".
            return f"{scaled:.{max(digits, len(str(int(abs(scaled)))))}g}{suffix}"
    return f"{value:.{digits}g}"


def _last_finite(y: np.ndarray) -> float | None:
    """The last finite value of ``y`` (usually its last element: no scan), or ``None``."""
    if y.size and np.isfinite(y[-1]):
        return float(y[-1])
    finite = np.flatnonzero(np.isfinite(y))
    return float(y[finite[-1]]) if finite.size else None


def _finite_runs(finite: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of consecutive ``True`` values."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], finite.astype(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


class SparklinePlot(QWidget):
    """A compact plot of one or more series against a shared x axis (training steps).

    It shows a title, the latest value, the y range, and optional vertical markers (e.g. the
    checkpoint shown and the checkpoint chosen). A click emits :attr:`clicked` with the x
    value under the mouse, so a timeline plot can move the timeline.
    """

    clicked = Signal(float)

    def __init__(self, title: str, *, y_range: tuple[float, float] | None = None, parent=None):
        super().__init__(parent)
        self.title = title
        self.fixed_y_range = y_range
        self._series: list[tuple[str, np.ndarray, np.ndarray, QColor, bool]] = []
        self._markers: list[tuple[float, QColor | None, Qt.PenStyle]] = []
        self._x_range: tuple[float, float] | None = None
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setMinimumHeight(72)
        self.setMinimumWidth(120)

    def sizeHint(self) -> QSize:
        return QSize(220, 80)

    def set_series(
        self,
        series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
        *,
        points: bool = False,
    ) -> None:
        """Replace the plotted series: ``(name, x, y)`` triples; NaN/None values are gaps.

        ``points`` draws a dot at every value (for sparse data such as checkpoints).
        """
        self._series = []
        for index, (name, x, y) in enumerate(series):
            xs = np.asarray(x, dtype=np.float64)
            ys = np.asarray(y, dtype=np.float64)  # None becomes NaN
            color = QColor(SERIES_COLORS[index % len(SERIES_COLORS)])
            self._series.append((name, xs, ys, color, points))
        self.update()

    def set_x_range(self, start: float, stop: float) -> None:
        """Fix the x axis (e.g. 0..total steps) instead of fitting it to the data."""
        self._x_range = (float(start), float(max(stop, start + 1)))
        self.update()

    def set_markers(self, markers: Sequence[tuple[float, str | None, str]]) -> None:
        """Vertical lines ``(x, colour, "solid" | "dash")``; colour ``None`` is the text colour."""
        styles = {"solid": Qt.SolidLine, "dash": Qt.DashLine}
        self._markers = [(float(x), None if c is None else QColor(c), styles[s]) for x, c, s in markers]
        self.update()

    def series_names(self) -> list[str]:
        """Names of the plotted series (for tests and legends)."""
        return [name for name, *_ in self._series]

    # -- geometry -------------------------------------------------------------------
    def _plot_rect(self) -> QRectF:
        # Room on the left for the y range, above for the title.
        return QRectF(_Y_LABEL_WIDTH, 16, max(1, self.width() - _Y_LABEL_WIDTH - 4), max(1, self.height() - 20))

    def _data_x_range(self) -> tuple[float, float]:
        if self._x_range is not None:
            return self._x_range
        finite = [x[np.isfinite(x)] for _, x, *_ in self._series]
        values = np.concatenate(finite) if finite else np.zeros(0)
        if values.size == 0:
            return 0.0, 1.0
        low, high = float(values.min()), float(values.max())
        return (low, high) if high > low else (low - 0.5, high + 0.5)

    def _data_y_range(self, shown: Sequence[np.ndarray]) -> tuple[float, float]:
        """y axis fitted to the ``shown`` (decimated) values: decimation keeps every extreme."""
        if self.fixed_y_range is not None:
            return self.fixed_y_range
        finite = [y[np.isfinite(y)] for y in shown]
        values = np.concatenate(finite) if finite else np.zeros(0)
        if values.size == 0:
            return 0.0, 1.0
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-12:
            pad = max(abs(high) * 0.05, 1e-6)
            return low - pad, high + pad
        pad = 0.05 * (high - low)
        return low - pad, high + pad

    # -- events -----------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:
        rect = self._plot_rect()
        x0, x1 = self._data_x_range()
        position = event.pos().x() if hasattr(event, "pos") else event.position().x()
        fraction = min(max((position - rect.left()) / rect.width(), 0.0), 1.0)
        self.clicked.emit(x0 + fraction * (x1 - x0))

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        foreground = self.palette().color(self.foregroundRole())
        rect = self._plot_rect()
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)

        # Title and latest values on one line above the plot; with several series only the
        # newest values that leave room for the title (at least the last series').
        metrics = painter.fontMetrics()
        latest = []
        for name, _, y, color, _ in self._series:
            last = _last_finite(y)
            if last is not None:
                text = short_number(last)
                latest.append((text, color, metrics.horizontalAdvance(text + " ")))
        title_width = metrics.horizontalAdvance(self.title + " ")
        while len(latest) > 1 and title_width + sum(w for *_, w in latest) > rect.right() - 2:
            latest.pop(0)
        x_text = rect.right()
        for text, color, width in reversed(latest):
            painter.setPen(color)
            painter.drawText(QRectF(x_text - width, 0, width, 15), Qt.AlignRight | Qt.AlignVCenter, text)
            x_text -= width
        painter.setPen(foreground)
        title = metrics.elidedText(self.title, Qt.ElideRight, int(max(0.0, x_text - 2)))
        painter.drawText(QRectF(2, 0, max(0.0, x_text - 2), 15), Qt.AlignLeft | Qt.AlignVCenter, title)

        frame = QColor(foreground)
        frame.setAlpha(70)
        painter.setPen(QPen(frame, 1))
        painter.drawRect(rect)

        # Decimated once per paint; everything below uses these few hundred points.
        max_points = max(8, int(rect.width()) * 2)
        shown = [(*_decimate(x, y, max_points), color, points) for _, x, y, color, points in self._series]
        x0, x1 = self._data_x_range()
        y0, y1 = self._data_y_range([ys for _, ys, *_ in shown])

        def to_point(x: float, y: float) -> QPointF:
            return QPointF(
                rect.left() + (x - x0) / (x1 - x0) * rect.width(),
                rect.bottom() - (y - y0) / (y1 - y0) * rect.height(),
            )

        # y range labels, faint, left of the frame.
        faint = QColor(foreground)
        faint.setAlpha(150)
        painter.setPen(faint)
        labels = QRectF(0, rect.top() - 2, _Y_LABEL_WIDTH - 3, rect.height() + 4)
        painter.drawText(labels, Qt.AlignRight | Qt.AlignTop, short_number(y1, 2))
        painter.drawText(labels, Qt.AlignRight | Qt.AlignBottom, short_number(y0, 2))

        painter.setClipRect(rect)
        for xs, ys, color, points in shown:
            # Pixel coordinates in numpy; Python only builds the QPointF of each kept point.
            px = (rect.left() + (xs - x0) / (x1 - x0) * rect.width()).tolist()
            py = (rect.bottom() - (ys - y0) / (y1 - y0) * rect.height()).tolist()
            finite = np.isfinite(xs) & np.isfinite(ys)
            # Width 1 takes Qt's fast path for antialiased lines: a 1.5 px pen strokes every
            # segment's outline, ~40 times slower on a noisy loss curve (3 ms per plot).
            painter.setPen(QPen(color, 1.0))
            for start, stop in _finite_runs(finite):
                if stop - start > 1:
                    painter.drawPolyline(QPolygonF([QPointF(a, b) for a, b in zip(px[start:stop], py[start:stop])]))
            if points:
                painter.setBrush(color)
                for index in np.flatnonzero(finite).tolist():
                    painter.drawEllipse(QPointF(px[index], py[index]), 2.0, 2.0)
                painter.setBrush(Qt.NoBrush)

        for x, color, style in self._markers:
            painter.setPen(QPen(foreground if color is None else color, 1.5, style))
            top, bottom = to_point(x, y1), to_point(x, y0)
            painter.drawPolyline(QPolygonF([top, bottom]))
        painter.end()


class SparklineGrid(QWidget):
    """Several :class:`SparklinePlot` in a grid of ``columns`` columns, created by name."""

    def __init__(self, columns: int = 2, parent=None):
        super().__init__(parent)
        self._columns = columns
        self._layout = QGridLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self.plots: dict[str, SparklinePlot] = {}

    def plot(self, name: str, **kwargs) -> SparklinePlot:
        """The plot called ``name``, created (next grid cell) on first use."""
        if name not in self.plots:
            plot = SparklinePlot(name, **kwargs)
            index = len(self.plots)
            self._layout.addWidget(plot, index // self._columns, index % self._columns)
            self.plots[name] = plot
        return self.plots[name]

    def clear(self) -> None:
        """Remove every plot."""
        for plot in self.plots.values():
            self._layout.removeWidget(plot)
            plot.deleteLater()
        self.plots.clear()
