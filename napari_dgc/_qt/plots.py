"""Small line plots (pyqtgraph) for the live losses and the checkpoint figures.

Each :class:`SparklinePlot` shows one or more series against the run's steps, a title with the
latest values, optional vertical markers (the checkpoint shown and the one chosen), and emits
:attr:`SparklinePlot.clicked` with the step under a click. Long series are decimated to about
two points per pixel before they reach pyqtgraph (min and max per bucket, so spikes stay), which
keeps the train panel's 10 Hz redraw cheap on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QFont
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_dgc.state.review import short_number

__all__ = ["SERIES_COLORS", "SparklineGrid", "SparklinePlot", "short_number"]

#: Line colours (matplotlib's "tab10"), readable on napari's dark and light themes.
SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

#: Axis, title and "current checkpoint" marker colour: mid grey reads on dark and light themes.
NEUTRAL = "#a0a0a0"

_MARKER_STYLES = {"solid": Qt.SolidLine, "dash": Qt.DashLine, "dot": Qt.DotLine}

#: Height of one row of plots in a grid (pixels).
PLOT_HEIGHT = 84


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


def _last_finite(y: np.ndarray) -> float | None:
    """The last finite value of ``y`` (usually its last element: no scan), or ``None``."""
    if y.size and np.isfinite(y[-1]):
        return float(y[-1])
    finite = np.flatnonzero(np.isfinite(y))
    return float(y[finite[-1]]) if finite.size else None


class SparklinePlot(pg.PlotItem):
    """A compact plot of one or more series against a shared x axis (run steps).

    A plot item of a :class:`SparklineGrid`: all plots of a grid share one graphics view, so a
    redraw of the grid is one repaint (docked in napari, eight separate views cost ~40 ms per
    redraw of the GUI thread, one shared view ~18 ms).

    Parameters
    ----------
    title : str
        Shown above the plot, followed by the latest value of each series in its colour.
    y_range : (float, float), optional
        A fixed y axis (else fitted to the data).
    tooltip : str
        What the plotted figure means.
    """

    #: The x value (run step) under a click.
    clicked = Signal(float)

    def __init__(
        self,
        title: str,
        *,
        y_range: tuple[float, float] | None = None,
        tooltip: str = "",
    ) -> None:
        super().__init__()
        self._series: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._curves: list[pg.PlotDataItem] = []
        self._points = False
        self._markers: list[tuple[float, str | None, str]] = []
        self._marker_lines: list[pg.InfiniteLine] = []
        self._title_html = ""
        self.setMinimumHeight(80)
        self.setMinimumWidth(120)
        self.setMenuEnabled(False)
        self.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        self.hideAxis("bottom")  # the x axis is the run's steps, shared by every plot
        self.layout.setContentsMargins(0, 0, 2, 0)
        font = QFont()
        font.setPointSize(7)
        axis = self.getAxis("left")
        axis.setStyle(tickFont=font, tickLength=-3, maxTickLevel=0, maxTextLevel=0)
        axis.setTickDensity(0.5)  # two or three labels: the plots are 60 px high
        axis.setWidth(34)
        axis.setPen(NEUTRAL)
        axis.setTextPen(NEUTRAL)
        # The y range is set by _fit_y_range with some slack, not fitted on every update: a new
        # range regenerates the axis labels, ten times a second on every plot.
        self.enableAutoRange(x=True, y=False)
        self.layout.setRowFixedHeight(0, 14)  # room for the title label, which floats above it
        self._title_label = pg.LabelItem(justify="left", size="8pt")
        self._title_label.setParentItem(self)
        self._title_label.anchor(itemPos=(0, 0), parentPos=(0, 0), offset=(30, -2))
        self.configure(title, y_range=y_range, tooltip=tooltip)

    def configure(self, title: str, *, y_range: tuple[float, float] | None = None, tooltip: str = "") -> None:
        """Empty the plot and give it a title, a y axis and a tooltip (as a new plot has)."""
        self.title = title
        self.fixed_y_range = y_range
        self._y_range: tuple[float, float] | None = y_range
        self._x_range = None
        if y_range is not None:
            self.setYRange(*y_range, padding=0)
        self.setToolTip(tooltip)
        self.set_series([])  # also sets the title
        self.set_markers([])

    # ------------------------------------------------------------------ data
    def set_series(
        self, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, points: bool = False
    ) -> None:
        """Replace the plotted series: ``(name, x, y)`` triples; NaN/None values are gaps.

        ``points`` draws a dot at every value (for sparse data such as checkpoints).
        """
        self._series = [
            (name, np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for name, x, y in series
        ]  # None becomes NaN
        if points != self._points:
            for curve in self._curves:
                self.removeItem(curve)
            self._curves, self._points = [], points
        while len(self._curves) > len(self._series):
            self.removeItem(self._curves.pop())
        max_points = max(8, int(2 * max(self.width(), 220)))
        for index, (_name, xs, ys) in enumerate(self._series):
            if index == len(self._curves):
                self._curves.append(self._new_curve(SERIES_COLORS[index % len(SERIES_COLORS)], points))
            if points:  # sparse values: a figure not computed yet is left out, not a gap
                keep = np.isfinite(xs) & np.isfinite(ys)
                xs, ys = xs[keep], ys[keep]
            else:
                xs, ys = _decimate(xs, ys, max_points)
            self._curves[index].setData(xs, ys)
        self._fit_y_range()
        self._set_title()

    def _fit_y_range(self) -> None:
        """Keep every finite value in view; change the range only when the data leaves it or
        fills less than a third of it, with 10 % slack each side.
        """
        if self.fixed_y_range is not None:
            return
        values = [y[np.isfinite(y)] for _, _, y in self._series]
        values = [v for v in values if v.size]
        if not values:
            return
        low = float(min(v.min() for v in values))
        high = float(max(v.max() for v in values))
        span = max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
        if self._y_range is not None:
            shown_low, shown_high = self._y_range
            inside = shown_low <= low and high <= shown_high
            if inside and span >= (shown_high - shown_low) / 3:
                return
        self._y_range = (low - 0.1 * span, high + 0.1 * span)
        self.setYRange(*self._y_range, padding=0)

    def _new_curve(self, color: str, points: bool) -> pg.PlotDataItem:
        symbol = {"symbol": "o", "symbolSize": 4, "symbolBrush": color, "symbolPen": None} if points else {}
        curve = pg.PlotDataItem(pen=pg.mkPen(color, width=1), connect="finite", **symbol)
        self.addItem(curve)
        return curve

    def set_x_range(self, start: float, stop: float) -> None:
        """Fix the x axis (e.g. 0..total steps) instead of fitting it to the data."""
        x_range = (float(start), float(max(stop, start + 1)))
        if x_range != self._x_range:
            self._x_range = x_range
            self.setXRange(*x_range, padding=0)

    def set_markers(self, markers: Sequence[tuple[float, str | None, str]]) -> None:
        """Vertical lines ``(x, colour, "solid" | "dash" | "dot")``; colour ``None`` is the neutral grey."""
        markers = [(float(x), color, style) for x, color, style in markers]
        if markers == self._markers:
            return
        for line in self._marker_lines:
            self.removeItem(line)
        self._markers = markers
        self._marker_lines = []
        for x, color, style in markers:
            line = pg.InfiniteLine(
                x,
                angle=90,
                movable=False,
                pen=pg.mkPen(color or NEUTRAL, width=1.5, style=_MARKER_STYLES[style]),
            )
            self.addItem(line, ignoreBounds=True)
            self._marker_lines.append(line)

    # ------------------------------------------------------------------ what it shows
    def series_names(self) -> list[str]:
        """Names of the plotted series, in colour order."""
        return [name for name, *_ in self._series]

    def markers(self) -> list[tuple[float, str | None, str]]:
        """The vertical markers ``(x, colour, style)``."""
        return list(self._markers)

    def latest_values(self) -> list[float | None]:
        """The last finite value of each series (shown in the title)."""
        return [_last_finite(y) for _, _, y in self._series]

    def _set_title(self) -> None:
        # With several series only the newest three values: the title must fit a narrow plot.
        values = [(SERIES_COLORS[i % len(SERIES_COLORS)], v) for i, v in enumerate(self.latest_values())]
        shown = [f'<span style="color:{c}">{short_number(v)}</span>' for c, v in values if v is not None][-3:]
        html = f'<span style="color:{NEUTRAL}">{self.title}</span> ' + " ".join(shown)
        if html != self._title_html:
            self._title_html = html
            self._title_label.setText(html)

    def click_at(self, scene_position) -> None:
        """Emit :attr:`clicked` with the run step under ``scene_position`` (clipped to the view)."""
        x0, x1 = self.vb.viewRange()[0]
        x = self.vb.mapSceneToView(scene_position).x()
        self.clicked.emit(min(max(x, x0), x1))


class SparklineGrid(pg.GraphicsLayoutWidget):
    """Several :class:`SparklinePlot` in a grid of ``columns`` columns, created by name, drawn
    in one graphics view.
    """

    def __init__(self, columns: int = 2, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground(None)
        self._columns = columns
        self.ci.layout.setContentsMargins(0, 0, 0, 4)  # the last row's lowest values stay clear
        self.ci.layout.setSpacing(2)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(0)
        self.plots: dict[str, SparklinePlot] = {}
        self.scene().sigMouseClicked.connect(self._on_click)
        # Plots built ahead of need, one per turn of the event loop: building one costs the GUI
        # thread ~7 ms (pyqtgraph makes its axes and menus), and the eight plots of a training's
        # first redraw, built at once, froze the GUI for ~0.3 s on a loaded machine.
        self._spare: list[SparklinePlot] = []
        self._spare_target = 0
        self._spare_timer = QTimer(self)
        self._spare_timer.setInterval(0)
        self._spare_timer.timeout.connect(self._build_one_spare)

    def prepare(self, count: int) -> None:
        """Have ``count`` plots ready (shown or spare), building the missing ones in the background
        of the event loop, one per turn.
        """
        self._spare_target = count
        if len(self.plots) + len(self._spare) < count:
            self._spare_timer.start()

    def _build_one_spare(self) -> None:
        if len(self.plots) + len(self._spare) >= self._spare_target:
            self._spare_timer.stop()
            return
        self._spare.append(SparklinePlot(""))

    def plot(self, name: str, **kwargs) -> SparklinePlot:
        """The plot called ``name``, created (next grid cell) on first use."""
        if name not in self.plots:
            if self._spare:
                plot = self._spare.pop()
                plot.configure(name, **kwargs)
            else:
                plot = SparklinePlot(name, **kwargs)
            index = len(self.plots)
            self.addItem(plot, row=index // self._columns, col=index % self._columns)
            self.plots[name] = plot
            rows = -(-len(self.plots) // self._columns)
            self.setFixedHeight(rows * PLOT_HEIGHT + 4)
        return self.plots[name]

    def remove_plots(self) -> None:
        """Remove every plot (kept as spares for the next ones).

        Not named ``clear``: ``GraphicsLayoutWidget`` sets ``clear`` on each instance (its
        layout's), which would hide this method and leave :attr:`plots` naming removed plots.
        """
        self.ci.clear()
        self._spare.extend(self.plots.values())
        self.plots.clear()
        self.setFixedHeight(0)

    def _on_click(self, event) -> None:
        position = event.scenePos()
        for plot in self.plots.values():
            if plot.sceneBoundingRect().contains(position):
                plot.click_at(position)
