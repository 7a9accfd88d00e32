"""npe2 writer: save a Labels layer (class map, cluster map or mask) as TIFF, PNG or NPY + legend.

* "DGC classes" layers (``metadata["dgc_mapping"]``) are written with their class legend;
* "DGC clusters" layers (``metadata["dgc_n_clusters"]``) are written as cluster ids
  ``0..K-1`` (the display offset that keeps cluster 0 visible is removed);
* any other Labels layer (a mask) is written as it is, with a legend of the values it holds:
  their class names (``metadata["class_names"]``, indexed by value, as the merge panel's mask
  layers carry them; ``label N`` where none is known), ``ignore`` for 255, and the colours the
  layer shows them in. :func:`napari_dgc.analysis.masks.read_mask` reads names and colours
  back from that legend.

napari's save dialog has already asked before replacing a file, so existing files are replaced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.export import cluster_legend, write_label_map
from napari_dgc.analysis.masks import IGNORE_VALUE


def layer_legend(labels: np.ndarray, metadata: dict, colormap: Any = None) -> tuple[np.ndarray, dict]:
    """The values to write and their legend, from a Labels layer's data, metadata and colormap.

    Parameters
    ----------
    labels : np.ndarray
        The layer's label data.
    metadata : dict
        The layer's metadata (see the module docstring for the keys that matter).
    colormap : napari label colormap, optional
        The layer's colormap (anything with ``map(values) -> RGBA``): the colours of a mask's
        values in its legend.
    """
    if layer_keys.MAPPING in metadata:
        mapping = ClassMapping.from_json(metadata[layer_keys.MAPPING], complete=False)
        return labels, mapping.legend()
    if layer_keys.N_CLUSTERS in metadata:
        offset = int(metadata.get(layer_keys.LABEL_OFFSET, 0))
        return labels - offset, cluster_legend(int(metadata[layer_keys.N_CLUSTERS]))
    values = [int(v) for v in np.unique(labels)]
    names = metadata.get("class_names")
    names = list(names) if isinstance(names, (list, tuple)) else []
    colors = _layer_colors(colormap, values)

    def name_of(value: int) -> str:
        if value == IGNORE_VALUE:
            return "ignore"
        if 0 <= value < len(names) and str(names[value]).strip():
            return str(names[value]).strip()
        return f"label {value}"

    return labels, {
        "kind": "mask" if names else "labels",
        "values": [
            {"value": v, "name": name_of(v), "color": None if v == IGNORE_VALUE else colors.get(v)}
            for v in values
        ],
    }


def _layer_colors(colormap: Any, values: list[int]) -> dict[int, str]:
    """``"#rrggbb"`` of each value the colormap shows (transparent values have none)."""
    if colormap is None or not hasattr(colormap, "map") or not values:
        return {}
    try:
        rgba = np.asarray(colormap.map(np.asarray(values)), dtype=np.float64).reshape(len(values), -1)
    except (TypeError, ValueError, IndexError, AttributeError):
        return {}
    if rgba.shape[1] < 3:
        return {}
    colors = {}
    for value, row in zip(values, rgba):
        if rgba.shape[1] == 4 and row[3] <= 0:
            continue
        red, green, blue = (int(round(min(max(c, 0.0), 1.0) * 255)) for c in row[:3])
        colors[value] = f"#{red:02x}{green:02x}{blue:02x}"
    return colors


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
    labels, legend = layer_legend(
        np.asarray(data), dict(meta.get("metadata") or {}), colormap=meta.get("colormap")
    )
    legend = {**legend, "layer": meta.get("name")}
    return [str(p) for p in write_label_map(path, labels, legend, overwrite=True)]
