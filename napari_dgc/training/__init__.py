"""Training: the event generator shared by the CLI and the GUI, and what it is built from.

``loop`` holds :func:`~napari_dgc.training.loop.train`; ``losses`` the loss terms;
``sampling`` the overlapping crop pairs; ``normalization`` the dataset-level band statistics.
"""
