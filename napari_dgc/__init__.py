"""napari-dgc: unsupervised hyperspectral segmentation by Deep Global Clustering.

The engine (cube I/O, model, training, segmentation, metrics) lives in the top-level modules
and imports no GUI toolkit; the napari widgets live in :mod:`napari_dgc._qt`.
"""

__version__ = "0.1.0"
