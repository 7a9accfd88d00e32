"""The cluster table of the cluster-merge panel: colour, class and pixel shares of every cluster."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem, QVBoxLayout

from napari_dgc._qt.cube_layers import cluster_colors
from napari_dgc._qt.merge_parts import MergeView, show_rows, swatch
from napari_dgc.state.merge import MergeModel


class MergeClustersView(MergeView):
    """One row per cluster: colour, class, share of all pixels and of each cube's.

    The selected rows are the model's :attr:`~MergeModel.selected_clusters`, both ways; rows
    can be dragged onto the class list.
    """

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget()
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setDragEnabled(True)
        self.table.setDragDropMode(QAbstractItemView.DragOnly)
        self.table.verticalHeader().setVisible(False)
        show_rows(self.table)  # five rows stay visible when the dock is short
        self.table.itemSelectionChanged.connect(self._on_rows_selected)
        layout.addWidget(self.table)
        model.mapping_changed.connect(self._render)
        model.statistics_changed.connect(self._render)
        model.selection_changed.connect(self._show_selection)
        self._render()

    def _render(self) -> None:
        model, table = self.model, self.table
        k = model.n_clusters
        cubes = list(model.statistics)
        pooled = model.pooled_statistics()
        shares = [pooled, *(model.statistics[c] for c in cubes)] if pooled is not None else []
        headers = ["cluster", "class", "all %"] + [f"{c} %" for c in cubes]
        table.blockSignals(True)
        table.clear()
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(k)
        colors = cluster_colors(k)
        for cluster in range(k):
            table.setItem(cluster, 0, QTableWidgetItem(swatch(colors[cluster]), str(cluster)))
            owner = model.mapping.class_of_cluster(cluster)
            if owner is None:
                table.setItem(cluster, 1, QTableWidgetItem("—"))
            else:
                cls = model.mapping.classes[owner]
                table.setItem(cluster, 1, QTableWidgetItem(swatch(cls.color), cls.name))
            for column, stats in enumerate(shares, start=2):
                item = QTableWidgetItem(f"{100 * stats.shares[cluster]:.1f}")
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                table.setItem(cluster, column, item)
        table.resizeColumnsToContents()
        table.blockSignals(False)
        self._show_selection()

    def _show_selection(self) -> None:
        """Select the rows of the model's selected clusters (without echoing it back)."""
        table = self.table
        table.blockSignals(True)
        table.clearSelection()
        rows, selection = table.model(), table.selectionModel()
        for cluster in self.model.selected_clusters:
            selection.select(rows.index(cluster, 0), selection.Select | selection.Rows)
        table.blockSignals(False)

    def _on_rows_selected(self) -> None:
        self.model.select_clusters([index.row() for index in self.table.selectedIndexes()])
