"""A titled section whose content folds away behind an arrow button."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QToolButton, QVBoxLayout, QWidget


class CollapsibleSection(QWidget):
    """A tool button with an arrow that shows or hides :attr:`content`.

    Parameters
    ----------
    title : str
        Text of the button.
    content : QWidget
        The folded widget.
    expanded : bool
        Whether the content is shown initially.
    """

    def __init__(self, title: str, content: QWidget, *, expanded: bool = True, parent=None):
        super().__init__(parent)
        self.content = content
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.toggle.toggled.connect(self.set_expanded)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        """Show or hide the content."""
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)  # re-enters through the toggled signal
            return
        self.content.setVisible(expanded)
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)

    @property
    def expanded(self) -> bool:
        """Whether the content is shown."""
        return self.toggle.isChecked()
