"""What the screenshot scripts of this folder share: the window size and waiting for Qt."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent
#: the window size every documented screenshot is taken at (issue 15: panels fit 1280 x 800)
SIZE = (1280, 800)


def wait(condition: Callable[[], bool], timeout_s: float = 300.0) -> None:
    """Process Qt events until ``condition()`` holds; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the viewer did not get there in time")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.8) -> None:
    """Process Qt events for ``seconds`` (redraws, layouts, the 10 Hz plot refresh)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)


def close_notifications() -> None:
    """Close napari's notification toasts (deprecation notices over the canvas), found among
    Qt's widgets by class name: napari offers no public way to reach them.
    """
    for widget in QApplication.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()
