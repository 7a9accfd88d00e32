"""The granularity slider of the cluster-merge panel: the merge tree's levels, from K classes to 2."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSlider

from napari_dgc._qt.merge_parts import REFUSALS, MergeView
from napari_dgc.state.merge import MergeModel

_LABEL = "Granularity (classes):"
_TOOLTIP = "Merge similar clusters (merge tree of their mean spectra): K classes ... 2"


class MergeGranularityView(MergeView):
    """A slider over the levels of the model's merge tree (:meth:`MergeModel.set_granularity`).

    Moving it replaces the mapping by that level at once (the class layers follow); a drag
    over several levels is one undo step. After a hand edit the slider stays where it was and
    its label says "by hand" (releasing it on that level applies the level again). Disabled
    while there is no tree (no cube pixels, or fewer than two clusters with pixels), with the
    reason as its tooltip.
    """

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel(_LABEL))
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setPageStep(1)
        self.slider.setTickPosition(QSlider.TicksBelow)
        self.slider.valueChanged.connect(self._on_moved)
        self.slider.sliderReleased.connect(self._on_released)
        layout.addWidget(self.slider, 1)
        self.value_label = QLabel()
        layout.addWidget(self.value_label)
        model.granularity_changed.connect(self._render)
        self._render()

    def _render(self) -> None:
        try:
            n_active = self.model.merge_tree().n_active
        except REFUSALS as error:
            n_active, reason = 0, str(error)  # e.g. one active cluster: said, not hidden
        level = self.model.granularity
        self.slider.blockSignals(True)
        self.slider.setEnabled(n_active > 2)
        if n_active < 2:
            self.slider.setRange(0, 0)
            self.slider.setToolTip(f"No merge tree: {reason}")
            self.value_label.setText("–")
        else:
            self.slider.setRange(2, n_active)
            self.slider.setToolTip(_TOOLTIP)
            if level is not None:
                self.slider.setValue(level)
            self.value_label.setText(str(level) if level is not None else "by hand")
        self.slider.blockSignals(False)

    def _on_moved(self, value: int) -> None:
        self.attempt(self.model.set_granularity, value)

    def _on_released(self) -> None:
        # A drag back to the level it started on emits no valueChanged.
        if self.model.granularity != self.slider.value():
            self._on_moved(self.slider.value())
