"""napari widgets of napari-dgc (Qt through qtpy only; one widget per module)."""
