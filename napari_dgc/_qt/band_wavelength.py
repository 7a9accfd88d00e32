"""The wavelength of the band shown: napari's band slider gives only an index.

:func:`follow_band_wavelength` keeps the viewer's text overlay (a public napari model, no Qt)
showing e.g. ``band 57 of 301 · 612.3 nm`` for the cube layers opened by the napari-dgc reader,
whose band axis the reader labels ``band``, from the first move of the slider on, and appends
the same to the status bar's coordinates while the pointer is over the canvas
(``[57 120 80]: 0.34 · band 57 of 301 · 612.3 nm``). The panels install it when they dock;
once per viewer.
"""

from __future__ import annotations

import weakref

from napari_dgc import layer_metadata as layer_keys

#: Viewers already followed (so several panels install one follower).
_followed: weakref.WeakSet = weakref.WeakSet()


def band_text(viewer) -> str | None:
    """``band I of N · W nm`` of the first cube layer with wavelengths, at the slider's band."""
    for layer in viewer.layers:
        wavelengths = layer.metadata.get("wavelengths") if layer_keys.CUBE_PATH in layer.metadata else None
        if not wavelengths or layer.ndim != 3 or getattr(layer, "rgb", False):
            continue
        # The cube is band-first and, with three dimensions, its band axis is the viewer's first.
        axis = viewer.dims.ndim - 3
        index = int(viewer.dims.current_step[axis]) if axis >= 0 else 0
        index = min(max(index, 0), len(wavelengths) - 1)
        return f"band {index} of {len(wavelengths)} · {float(wavelengths[index]):.1f} nm"
    return None


def follow_band_wavelength(viewer) -> bool:
    """Show the current band's wavelength in the text overlay and the status bar.

    Returns whether a follower was installed now (``False``: the viewer had one already).
    Text the user put in the overlay is left alone.
    """
    if viewer in _followed:
        return False
    _followed.add(viewer)
    shown: dict[str, str | None] = {"text": None}

    def update(event=None) -> None:
        overlay = viewer.text_overlay
        if overlay.text and overlay.text != shown["text"]:
            return  # someone else's text
        text = band_text(viewer)
        if text is None:
            if shown["text"] is not None and overlay.text == shown["text"]:
                overlay.text, overlay.visible = "", False
            shown["text"] = None
            return
        shown["text"] = text
        overlay.text = text
        overlay.visible = True

    def update_shown(event=None) -> None:
        if shown["text"] is not None:
            update()

    def add_to_status(event=None) -> None:
        # napari sets ``viewer.status`` from the layer under the pointer (a dict whose
        # "coordinates" the status bar shows, or one string for several selected layers).
        status = viewer.status
        text = band_text(viewer)
        if text is None:
            return
        if isinstance(status, dict) and "coordinates" in status:
            if text not in status["coordinates"]:
                viewer.status = {**status, "coordinates": f"{status['coordinates']} · {text}"}
        elif isinstance(status, str) and " » " in status and text not in status:
            viewer.status = f"{status} · {text}"

    viewer.events.status.connect(add_to_status)
    # Shown from the first move of the slider on: drawing the overlay's text the first time
    # costs napari ~0.5 s (glyphs), which docking a panel should not pay.
    viewer.dims.events.current_step.connect(update)
    viewer.layers.events.inserted.connect(update_shown)
    viewer.layers.events.removed.connect(update_shown)
    return True
