"""The napari side of the cluster-merge panel: reading and adding its layers.

Which layers are clusters, masks and classes, and how a clustering, masks and a class mapping
become layers.

The merge model (:mod:`napari_dgc.state.merge`) never sees a layer; these functions translate
between the two, reading and writing the keys of :mod:`napari_dgc.layer_metadata`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.analysis.classes import ClassMapping, default_class_color
from napari_dgc.analysis.masks import DEFAULT_LEGEND, IGNORE_VALUE
from napari_dgc.state.merge import Clustering, MaskInput

CLASSES_PREFIX = "DGC classes"
MASK_PREFIX = "DGC mask"

#: (run, checkpoint, K): the layers of one clustering.
ClusteringKey = tuple[str, "str | None", int]


def classes_layer_name(cube_name: str) -> str:
    """Name of the Labels layer that shows the classes of a cube."""
    return f"{CLASSES_PREFIX} [{cube_name}]"


def mask_layer_name(cube_name: str) -> str:
    """Name of a mask layer created for a cube."""
    return f"{MASK_PREFIX} [{cube_name}]"


def is_cluster_layer(layer) -> bool:
    """Whether ``layer`` shows DGC clusters (made by the train panel)."""
    keys = {layer_keys.RUN, layer_keys.N_CLUSTERS, layer_keys.CUBE_LAYER}
    return isinstance(layer, Labels) and keys <= layer.metadata.keys()


def is_mask_layer(layer) -> bool:
    """Whether ``layer`` is a ground-truth mask of a cube (not clusters, not classes)."""
    metadata = layer.metadata
    return (
        isinstance(layer, Labels)
        and layer_keys.CUBE_LAYER in metadata
        and layer_keys.N_CLUSTERS not in metadata
        and layer_keys.MAPPING not in metadata
    )


def mask_legend(layer: Labels) -> dict[int, str]:
    """Value → class name of a mask layer (``metadata["class_names"]``, else the default)."""
    names = layer.metadata.get("class_names")
    return dict(enumerate(names)) if names else dict(DEFAULT_LEGEND)


def cluster_groups(viewer) -> dict[ClusteringKey, list[Labels]]:
    """Group the viewer's cluster layers by run, checkpoint and ``K``, in layer order."""
    groups: dict[ClusteringKey, list[Labels]] = {}
    for layer in viewer.layers:
        if is_cluster_layer(layer):
            meta = layer.metadata
            key = (
                str(meta[layer_keys.RUN]),
                meta.get(layer_keys.CHECKPOINT),
                int(meta[layer_keys.N_CLUSTERS]),
            )
            groups.setdefault(key, []).append(layer)
    return groups


def cube_layer(viewer, name: str) -> Image | None:
    """Find the 3-D image layer (bands first) called ``name``, if any."""
    return next(
        (
            layer
            for layer in viewer.layers
            if isinstance(layer, Image) and layer.name == name and layer.ndim == 3
        ),
        None,
    )


def clustering_of(viewer, key: ClusteringKey, layers: list[Labels]) -> Clustering:
    """Turn one group of cluster layers and their cubes' image layers into the model's clustering."""
    cluster_maps, cubes, wavelengths = {}, {}, {}
    for layer in layers:
        cube = layer.metadata[layer_keys.CUBE_LAYER]
        offset = int(layer.metadata.get(layer_keys.LABEL_OFFSET, 0))
        cluster_maps[cube] = np.asarray(layer.data).astype(np.int64) - offset
        image = cube_layer(viewer, cube)
        if image is not None and image.data.shape[1:] == cluster_maps[cube].shape:
            cubes[cube] = image.data
            if image.metadata.get("wavelengths") is not None:
                wavelengths[cube] = image.metadata["wavelengths"]
    return Clustering(key[0], key[1], key[2], cluster_maps, cubes, wavelengths)


def mask_inputs(viewer) -> tuple[dict[str, MaskInput], list[Labels]]:
    """Collect the masks of the cubes that have a mask layer, and the layers used.

    Where a cube has several mask layers, the selected one counts.
    """
    chosen: dict[str, Labels] = {}
    selected = set(viewer.layers.selection)
    for layer in viewer.layers:
        if is_mask_layer(layer):
            cube = layer.metadata[layer_keys.CUBE_LAYER]
            if cube not in chosen or layer in selected:
                chosen[cube] = layer
    masks = {
        cube: MaskInput(np.asarray(layer.data), mask_legend(layer), layer.name)
        for cube, layer in chosen.items()
    }
    return masks, list(chosen.values())


def add_mask_layer(
    viewer,
    values: np.ndarray,
    legend: dict[int, str],
    cube: str,
    source: Labels,
    mask_file: Path | None = None,
) -> Labels:
    """Add ``values`` as the mask layer of ``cube``, placed like its cluster layer ``source``."""
    colors = {None: "transparent", 0: "transparent", IGNORE_VALUE: "#ffffff"}
    colors.update({value: default_class_color(name, value) for value, name in legend.items() if value})
    metadata = {layer_keys.CUBE_LAYER: cube, "class_names": [legend[v] for v in sorted(legend)]}
    if mask_file is not None:
        metadata[layer_keys.MASK_FILE] = str(mask_file)
    return viewer.add_labels(
        values,
        name=mask_layer_name(cube),
        metadata=metadata,
        colormap=DirectLabelColormap(color_dict=colors),
        opacity=0.5,
        scale=tuple(source.scale),
        translate=tuple(source.translate),
    )


def show_classes(
    viewer, mapping: ClassMapping, cluster_maps: dict[str, np.ndarray], cluster_layers: list[Labels]
) -> None:
    """Show ``mapping`` applied to the cluster maps as one "DGC classes [<cube>]" layer per cube.

    ``cluster_layers`` are the layers the maps come from; the class layers take their place
    on the canvas and their run and checkpoint.
    """
    colors = {None: "transparent", 0: "transparent"}
    colors.update({value: cls.color for value, cls in enumerate(mapping.classes, start=1)})
    colormap = DirectLabelColormap(color_dict=colors)
    sources = {layer.metadata[layer_keys.CUBE_LAYER]: layer for layer in cluster_layers}
    for cube, labels in cluster_maps.items():
        class_map = mapping.apply(labels)
        name = classes_layer_name(cube)
        source = sources[cube]
        metadata = {
            layer_keys.MAPPING: mapping.to_json(),
            layer_keys.CUBE_LAYER: cube,
            layer_keys.RUN: source.metadata[layer_keys.RUN],
            layer_keys.CHECKPOINT: source.metadata.get(layer_keys.CHECKPOINT),
        }
        layer = next((lay for lay in viewer.layers if isinstance(lay, Labels) and lay.name == name), None)
        if layer is None:
            viewer.add_labels(
                class_map,
                name=name,
                metadata=metadata,
                colormap=colormap,
                opacity=0.6,
                scale=tuple(source.scale),
                translate=tuple(source.translate),
            )
        else:
            layer.metadata.update(metadata)
            layer.colormap = colormap
            layer.data = class_map
