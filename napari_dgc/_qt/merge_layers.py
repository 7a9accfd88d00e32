"""The napari side of the cluster-merge panel: reading and adding its layers.

Which layers are clusters, masks and classes, and how a clustering, masks and a class mapping
become layers.

The merge model (:mod:`napari_dgc.state.merge`) never sees a layer; these functions translate
between the two, reading and writing the keys of :mod:`napari_dgc.layer_metadata`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.colormaps import DirectLabelColormap

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.analysis.classes import ClassMapping
from napari_dgc.analysis.masks import DEFAULT_LEGEND, IGNORE_VALUE, DrawnShape, legend_colors
from napari_dgc.errors import DGCError
from napari_dgc.io.cube import Cube
from napari_dgc.io.preparation import Preparation
from napari_dgc.run_folder import RunDirectory
from napari_dgc.run_folder.preparation_file import run_preparation
from napari_dgc.state.merge import Clustering, MaskInput

CLASSES_PREFIX = "DGC classes"
MASK_PREFIX = "DGC mask"
#: Feature (property) columns of a Shapes layer that give each shape's class, first found wins.
SHAPE_CLASS_FEATURES = ("class", "label", "name")

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
    """Value → class name of a mask layer (``metadata["class_names"]``, else the default).

    ``class_names`` is indexed by value (as the writer reads it); empty entries are values
    without a class.
    """
    names = layer.metadata.get("class_names")
    if not names:
        return dict(DEFAULT_LEGEND)
    return {value: str(name).strip() for value, name in enumerate(names) if str(name).strip()}


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
    """Turn one group of cluster layers and their cubes' image layers into the model's clustering.

    The cubes' pixels are prepared as the run's were (band crop, references, binning), so the
    cluster spectra are those the model saw and a binned run's maps fit them.
    """
    preparation = _run_preparation(key[0])
    cluster_maps, cubes, wavelengths = {}, {}, {}
    for layer in layers:
        cube = layer.metadata[layer_keys.CUBE_LAYER]
        offset = int(layer.metadata.get(layer_keys.LABEL_OFFSET, 0))
        cluster_maps[cube] = np.asarray(layer.data).astype(np.int64) - offset
        image = cube_layer(viewer, cube)
        pixels, cube_wavelengths = (None, None) if image is None else _prepared(image, preparation)
        if pixels is not None and pixels.shape[1:] == cluster_maps[cube].shape:
            cubes[cube] = pixels
            if cube_wavelengths is not None:
                wavelengths[cube] = cube_wavelengths
    return Clustering(key[0], key[1], key[2], cluster_maps, cubes, wavelengths)


def _run_preparation(run_dir: str) -> Preparation | None:
    """The preparation of the run a clustering comes from (None: the run cannot be read)."""
    try:
        return run_preparation(RunDirectory.open(run_dir))
    except (DGCError, OSError):
        return None


def _prepared(image: Image, preparation: Preparation | None) -> tuple[object | None, list | None]:
    """A cube layer's band-first pixels and wavelengths, prepared as the run's cubes were
    (as they are when the run cannot be read; None when the preparation does not fit it).
    """
    wavelengths = image.metadata.get("wavelengths")
    if preparation is None or preparation.is_identity:
        return image.data, wavelengths
    try:
        cube = Cube(
            data=image.data, band_axis=0, wavelengths=wavelengths, path=Path(image.name), format="layer"
        )
        prepared = preparation.apply(cube)
    except DGCError:
        return None, None
    return prepared.bands_first(), None if prepared.wavelengths is None else prepared.wavelengths.tolist()


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


def mask_colormap(legend: dict[int, str], colors: dict[int, str] | None = None) -> DirectLabelColormap:
    """Colours of a mask layer: like the merge panel's classes of the same name.

    See :func:`~napari_dgc.analysis.masks.legend_colors` (``colors`` from a legend file win);
    value 0 and "ignore" stay transparent so the cube shows through: a new mask is all one of
    them, and a mask from shapes is "ignore" wherever no shape lies.
    """
    color_dict = {
        None: "transparent",
        **legend_colors(legend, colors),
        0: "transparent",
        IGNORE_VALUE: "transparent",
    }
    return DirectLabelColormap(color_dict=color_dict)


def add_mask_layer(
    viewer,
    values: np.ndarray,
    legend: dict[int, str],
    cube: str,
    source: Labels,
    mask_file: Path | None = None,
    colors: dict[int, str] | None = None,
) -> Labels:
    """Add ``values`` as the mask layer of ``cube``, placed like its cluster layer ``source``.

    Coloured by :func:`mask_colormap`.
    """
    # Indexed by value, the convention napari_dgc._writer and mask_legend read.
    names = [legend.get(value, "") for value in range(max(legend, default=-1) + 1)]
    metadata = {layer_keys.CUBE_LAYER: cube, "class_names": names}
    if mask_file is not None:
        metadata[layer_keys.MASK_FILE] = str(mask_file)
    return viewer.add_labels(
        values,
        name=mask_layer_name(cube),
        metadata=metadata,
        colormap=mask_colormap(legend, colors),
        opacity=0.5,
        scale=tuple(source.scale),
        translate=tuple(source.translate),
    )


def shape_labels(layer: Shapes) -> list[str | int | None]:
    """Each shape's class: its value in the first :data:`SHAPE_CLASS_FEATURES` column, else ``None``."""
    features = layer.features
    column = next((c for c in features.columns if str(c).strip().lower() in SHAPE_CLASS_FEATURES), None)
    if column is None:
        return [None] * len(layer.data)
    labels: list[str | int | None] = []
    for value in features[column]:
        if (
            isinstance(value, (bool, np.bool_))
            or value is None
            or (isinstance(value, float) and np.isnan(value))
        ):
            labels.append(None)
        elif isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
            labels.append(int(value))
        else:
            labels.append(str(value))
    return labels


def drawn_shapes(layer: Shapes, target: Labels) -> list[DrawnShape]:
    """The shapes of ``layer`` in the pixel coordinates of ``target`` (through world coordinates).

    A Shapes layer drawn over the cube while its band slider is shown has 3-D vertices; the last
    two (row, col) place the shape.
    """
    shapes = []
    for vertices, kind, label in zip(layer.data, layer.shape_type, shape_labels(layer)):
        pixels = [target.world_to_data(layer.data_to_world(vertex)[-2:])[-2:] for vertex in vertices]
        shapes.append(DrawnShape(kind, np.asarray(pixels, dtype=np.float64), label))
    return shapes


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
