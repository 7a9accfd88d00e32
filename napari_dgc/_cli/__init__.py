"""Sub-commands of the ``napari-dgc`` CLI, one module each (see :mod:`napari_dgc.cli`)."""
