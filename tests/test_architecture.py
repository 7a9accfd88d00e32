"""The engine stays headless: importing it pulls in no Qt, napari or magicgui."""

from __future__ import annotations

import subprocess
import sys

GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")
NAPARI_SIDE = ("_reader", "_writer", "_sample_data")

_PROBE = f"""
import importlib, pkgutil, sys
import napari_dgc
names = [
    info.name for info in pkgutil.walk_packages(napari_dgc.__path__, "napari_dgc.")
    if "._qt" not in info.name and info.name.rsplit(".", 1)[-1] not in {NAPARI_SIDE!r}
]
for name in names:
    importlib.import_module(name)
gui = sorted({{m.split(".")[0] for m in sys.modules}} & set({GUI_PACKAGES!r}))
print(len(names))
print(",".join(gui))
"""


def test_engine_modules_import_no_gui_package():
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    count, gui = (result.stdout + "\n").split("\n")[:2]
    assert int(count) >= 20  # the probe really walked the engine
    assert gui == "", f"engine imports GUI packages: {gui}"
