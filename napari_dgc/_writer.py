"""npe2 writer: save a Labels layer (class map, cluster map or mask) as TIFF, PNG or NPY + legend.

* "DGC classes" layers (``metadata["dgc_mapping"]``) are written with their class legend;
* "DGC clusters" layers (``metadata["dgc_n_clusters"]``) are written as cluster ids
  ``0..K-1`` (the display offset that keeps cluster 0 visible is removed);
* any other Labels layer is written as it is, with a legend of the values it holds.

napari's save dialog has already asked before replacing a file, so existing files are replaced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.export import cluster_legend, write_label_map


def layer_legend(labels: np.ndarray, metadata: dict) -> tuple[np.ndarray, dict]:
    """The values to write and their legend, from a Labels layer's data and metadata."""
    if layer_keys.MAPPING in metadata:
        mapping = ClassMapping.from_json(metadata[layer_keys.MAPPING], complete=False)
        return labels, mapping.legend()
    if layer_keys.N_CLUSTERS in metadata:
        offset = int(metadata.get(layer_keys.LABEL_OFFSET, 0))
        return labels - offset, cluster_legend(int(metadata[layer_keys.N_CLUSTERS]))
    values = [int(v) for v in np.unique(labels)]
    return labels, {
        "kind": "labels",
        "values": [{"value": v, "name": f"label {v}", "color": None} for v in values],
    }


def write_class_map(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer (npe2 single-layer writer).

    Parameters
    ----------
    path : str
        Destination ending in ``.tif``, ``.tiff``, ``.png`` or ``.npy``.
    data : array-like
        The layer's 2-D label data.
    meta : dict
        The layer's attributes; ``meta["metadata"]`` says what kind of map it is.

    Returns
    -------
    list of str
        The written files (map and legend).
    """
    labels, legend = layer_legend(np.asarray(data), dict(meta.get("metadata") or {}))
    legend = {**legend, "layer": meta.get("name")}
    return [str(p) for p in write_label_map(path, labels, legend, overwrite=True)]
