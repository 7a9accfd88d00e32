"""Cube image layers in, "DGC clusters" Labels layers out.

A cube layer is an Image layer with three axes and no RGB channel axis. Layers opened by the
napari-dgc reader are band-first and know their file (``metadata["dgc_cube_path"]``); any
other 3-D image layer can be used once the user says where its band axis is.

Cluster label maps are shown in one Labels layer per cube, named ``DGC clusters [<cube>]``.
DGC cluster 0 is a real cluster, but napari draws label 0 as transparent background, so the
layer stores ``cluster + 1`` (``metadata["dgc_label_offset"] = 1``): 0 never occurs and every
cluster is drawn in its own colour.
"""

from __future__ import annotations

import colorsys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.io import Cube

#: Value added to cluster ids in the Labels layers (see module docstring).
LABEL_OFFSET = 1

# Qualitative colours, strongest first (matplotlib "tab20" reordered); more clusters than this
# get golden-angle hues.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#c7c7c7",
)  # fmt: skip


def cluster_colors(n_clusters: int) -> list[str]:
    """``n_clusters`` distinct ``#rrggbb`` colours, cluster 0 first."""
    colors = list(_PALETTE[:n_clusters])
    for index in range(len(colors), n_clusters):
        hue = (index * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if index % 2 else 0.7)
        colors.append(f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}")
    return colors


def cluster_colormap(n_clusters: int) -> DirectLabelColormap:
    """Colormap drawing stored value ``k + LABEL_OFFSET`` in the colour of cluster ``k``."""
    color_dict = {None: "transparent", 0: "transparent"}
    for cluster, color in enumerate(cluster_colors(n_clusters)):
        color_dict[cluster + LABEL_OFFSET] = color
    return DirectLabelColormap(color_dict=color_dict)


def is_cube_layer(layer) -> bool:
    """Whether a layer can hold a hyperspectral cube: a 3-D, non-RGB Image layer."""
    return isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb


def is_reader_cube(layer) -> bool:
    """Whether a cube layer came from the napari-dgc reader (band-first, with its file)."""
    return is_cube_layer(layer) and layer_keys.CUBE_PATH in layer.metadata


@dataclass
class CubeSource:
    """A cube layer captured for training or review.

    Attributes
    ----------
    key : str
        The layer's ``unique_id``: results are routed by it, never by the current selection
        or name, so they land on the cube they were computed for.
    layer : Image
        The cube layer.
    name : str
        The layer's name when it was captured.
    cube : Cube or numpy.ndarray
        What the engine reads: a lazy :class:`Cube` for reader layers, else a band-last array.
    """

    key: str
    layer: Image
    name: str
    cube: Cube | np.ndarray

    @property
    def n_bands(self) -> int:
        """Number of bands."""
        return self.cube.n_bands if isinstance(self.cube, Cube) else int(self.cube.shape[-1])


def cube_source(layer: Image, band_axis: int = 0) -> CubeSource:
    """Capture a cube layer for the engine.

    Parameters
    ----------
    layer : Image
        A layer for which :func:`is_cube_layer` holds.
    band_axis : int
        Band axis of the layer's data (0 or 2); ignored for reader layers, which are band-first.

    Returns
    -------
    CubeSource
    """
    metadata = layer.metadata
    if is_reader_cube(layer):
        wavelengths = metadata.get("wavelengths")
        cube: Cube | np.ndarray = Cube(
            data=layer.data,
            band_axis=int(metadata.get(layer_keys.BAND_AXIS, 0)),
            wavelengths=None if wavelengths is None else np.asarray(wavelengths, dtype=np.float64),
            path=Path(metadata[layer_keys.CUBE_PATH]),
            format=str(metadata.get(layer_keys.FORMAT, "")),
            provenance=dict(metadata.get(layer_keys.PROVENANCE, {})),
        )
    else:
        cube = np.ascontiguousarray(np.moveaxis(np.asarray(layer.data), band_axis, -1), dtype=np.float32)
    return CubeSource(key=str(layer.unique_id), layer=layer, name=layer.name, cube=cube)


_warm_up_lock = threading.Lock()
_warm_up_started = False


def warm_up_labels() -> threading.Thread | None:
    """Build a small cluster Labels layer (not added to any viewer) once, in a background thread.

    napari compiles its labels colour mapping with numba the first time a Labels layer is
    drawn: about a second on the GUI thread, which made the first Start click freeze napari.
    The panels call this when they dock, so the compilation has happened by the time Start
    creates the cluster layers. Returns the thread the first time, else ``None``.
    """
    global _warm_up_started
    with _warm_up_lock:
        if _warm_up_started:
            return None
        _warm_up_started = True

    def build() -> None:
        Labels(np.zeros((2, 2), dtype=np.int32) + LABEL_OFFSET, colormap=cluster_colormap(3))

    thread = threading.Thread(target=build, name="napari-dgc labels warm-up", daemon=True)
    thread.start()
    return thread


def labels_layer_name(cube_name: str) -> str:
    """Name of the Labels layer that shows the clusters of a cube layer."""
    return f"DGC clusters [{cube_name}]"


def clusters_layer(
    viewer, source: CubeSource, *, run_dir: str | Path, n_clusters: int, layer: Labels | None = None
) -> Labels:
    """The Labels layer of a cube's clusters: ``layer`` if still in the viewer, else the layer
    named :func:`labels_layer_name`, else a new, empty (transparent) one.

    Creating a Labels layer costs the GUI thread about half a second, so the training panel
    calls this when Start is clicked rather than in the middle of training.
    """
    if layer is not None and layer in viewer.layers:
        return layer
    name = labels_layer_name(source.name)
    existing = next((lay for lay in viewer.layers if isinstance(lay, Labels) and lay.name == name), None)
    if existing is not None:
        return existing
    # The cube layer is (bands, rows, cols): its last two axes place the label map.
    return viewer.add_labels(
        np.zeros(source.layer.data.shape[-2:], dtype=np.int32),
        name=name,
        metadata={
            layer_keys.RUN: str(run_dir),
            layer_keys.CHECKPOINT: None,
            layer_keys.CUBE_LAYER: source.name,
            layer_keys.N_CLUSTERS: int(n_clusters),
            layer_keys.LABEL_OFFSET: LABEL_OFFSET,
        },
        colormap=cluster_colormap(n_clusters),
        opacity=0.6,
        scale=tuple(source.layer.scale[-2:]),
        translate=tuple(source.layer.translate[-2:]),
    )


def show_clusters(
    viewer,
    source: CubeSource,
    labels: np.ndarray,
    *,
    run_dir: str | Path,
    checkpoint_id: str,
    n_clusters: int,
    layer: Labels | None = None,
    binning: int = 1,
) -> Labels:
    """Show a cluster map on the Labels layer of its cube, creating the layer if needed.

    Parameters
    ----------
    viewer : napari.Viewer
    source : CubeSource
        The cube the labels were computed for.
    labels : numpy.ndarray
        ``(rows, cols)`` cluster ids ``0..K-1``.
    run_dir, checkpoint_id, n_clusters
        Recorded in the layer's metadata (read by the cluster-merge panel).
    layer : Labels, optional
        The layer used last time (see :func:`clusters_layer`).
    binning : int
        Side of the cube's pixel blocks one label stands for (the run's ``prep.binning``):
        the layer is scaled so that each label covers its block of the cube.

    Returns
    -------
    Labels
        The layer now showing ``labels``.
    """
    metadata = {
        layer_keys.RUN: str(run_dir),
        layer_keys.CHECKPOINT: checkpoint_id,
        layer_keys.CUBE_LAYER: source.name,
        layer_keys.N_CLUSTERS: int(n_clusters),
        layer_keys.LABEL_OFFSET: LABEL_OFFSET,
    }
    layer = clusters_layer(viewer, source, run_dir=run_dir, n_clusters=n_clusters, layer=layer)
    if layer.metadata.get(layer_keys.N_CLUSTERS) != n_clusters:
        layer.colormap = cluster_colormap(n_clusters)
    layer.metadata.update(metadata)
    layer.data = labels.astype(np.int32, copy=False) + LABEL_OFFSET
    # A label's block of binning x binning cube pixels: its centre is (binning - 1) / 2 pixels
    # from the block's first pixel.
    scale = np.asarray(source.layer.scale[-2:], dtype=float)
    layer.scale = tuple(scale * binning)
    layer.translate = tuple(np.asarray(source.layer.translate[-2:], dtype=float) + scale * (binning - 1) / 2)
    return layer
