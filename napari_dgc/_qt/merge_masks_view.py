"""The masks box of the merge panel: the cubes' masks, new, drawn and imported ones, mask class names."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QGridLayout, QGroupBox, QLabel, QLineEdit, QPushButton, QVBoxLayout

from napari_dgc._qt.merge_parts import MergeView
from napari_dgc.analysis.masks import MASK_SUFFIXES
from napari_dgc.state.merge import MergeModel


class MergeMasksView(MergeView):
    """The model's masks, the buttons that add mask layers and the mask class names field.

    Mask layers belong to napari, so this view asks for them with :attr:`new_mask_requested`,
    :attr:`shapes_requested` and :attr:`import_requested`; the panel adds the layers and hands
    the masks to the model.
    """

    #: The person asked for an empty mask layer to paint.
    new_mask_requested = Signal()
    #: The person asked for a mask rasterised from a Shapes layer.
    shapes_requested = Signal()
    #: The person chose mask files (a list of paths) to import.
    import_requested = Signal(list)

    def __init__(self, model: MergeModel, parent=None) -> None:
        super().__init__(model, parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Masks")
        grid = QGridLayout(box)
        self.mask_label = QLabel()
        self.mask_label.setWordWrap(True)
        grid.addWidget(self.mask_label, 0, 0, 1, 2)
        new_mask = QPushButton("New mask layer")
        new_mask.setToolTip(
            "An empty mask to paint with the brush; its values are named by the mask class names\n"
            "below or the masks already there (default 0 = background, 1 = tissue, 2 = lesion); 255 = ignore"
        )
        new_mask.clicked.connect(self.new_mask_requested.emit)
        import_masks = QPushButton("Import masks…")
        import_masks.clicked.connect(self._import_clicked)
        from_shapes = QPushButton("Mask from shapes")
        from_shapes.setToolTip(
            "Rasterise the selected Shapes layer (polygons, rectangles, ellipses) into a mask layer;\n"
            "each shape's class comes from its 'class' (or 'label') feature, a name or a value,\n"
            "else from its order (1, 2, ...); 'ignore' shapes are left out of the scores"
        )
        from_shapes.clicked.connect(self.shapes_requested.emit)
        grid.addWidget(new_mask, 1, 0)
        grid.addWidget(import_masks, 1, 1)
        grid.addWidget(from_shapes, 2, 0, 1, 2)
        self.names_edit = QLineEdit(model.ground_truth.class_names)
        self.names_edit.setPlaceholderText("mask class names of values 0, 1, ... (optional)")
        self.names_edit.setToolTip(
            "Optional names of mask values 0, 1, 2, ... for scoring, overriding the layers' own;\n"
            "repeat a name to merge values, e.g. 'background, tissue, tissue' scores lesion as tissue"
        )
        self.names_edit.textChanged.connect(self._on_names_edited)
        grid.addWidget(self.names_edit, 3, 0, 1, 2)
        layout.addWidget(box)
        model.ground_truth.changed.connect(self._render)
        self._render()

    def _on_names_edited(self, text: str) -> None:
        self.model.ground_truth.class_names = text

    def _render(self) -> None:
        truth = self.model.ground_truth
        text = ", ".join(f"{cube} ← {mask.name}" for cube, mask in truth.inputs.items()) or "none yet"
        self.mask_label.setText(f"Masks: {text}")
        if self.names_edit.text() != truth.class_names:
            self.names_edit.setText(truth.class_names)

    def _import_clicked(self) -> None:
        patterns = " ".join(f"*{suffix}" for suffix in MASK_SUFFIXES)
        paths, _ = QFileDialog.getOpenFileNames(self, "Import masks", "", f"Masks ({patterns})")
        if paths:
            self.import_requested.emit(paths)
