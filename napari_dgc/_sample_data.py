"""npe2 sample data: the synthetic leaf scene (with ground truth) and the bundled corn kernel.

Both samples go through :func:`napari_dgc._reader.cube_layer_data`, so their cube and
pseudo-RGB layers look and behave exactly like cubes opened from files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from napari_dgc import layer_metadata as layer_keys
from napari_dgc._reader import cube_layer_data
from napari_dgc.analysis.classes import default_class_color
from napari_dgc.datasets.synthetic import SyntheticScene, make_leaf_scene
from napari_dgc.io import Cube, open_cube

LayerDataTuple = tuple

RESOURCES = Path(__file__).resolve().parent / "resources"
CORN_KERNEL_HEADER = "corn_kernel/corn-kernel-hyperspectral.hdr"
GROUND_TRUTH_NAME = "ground truth"


def resource_path(name: str) -> Path:
    """Absolute path of a file bundled in napari-dgc's ``resources`` folder.

    Parameters
    ----------
    name : str
        Path relative to ``resources``, e.g. ``"corn_kernel/corn-kernel-hyperspectral.hdr"``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        If ``name`` leaves the resources folder or the file is not there (broken installation).
    """
    root = RESOURCES.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise FileNotFoundError(f"{name}: not inside napari-dgc's resources folder {root}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled resource is missing (reinstall napari-dgc)")
    return path


def scene_layer_data(
    scene: SyntheticScene, name: str, provenance: dict | None = None
) -> list[LayerDataTuple]:
    """Layer data tuples of a synthetic scene: cube, pseudo-RGB and ground-truth labels.

    Parameters
    ----------
    scene : SyntheticScene
        The scene.
    name : str
        Name of the cube layer; the others are named after it by :func:`cube_layer_data`, and
        the labels layer is ``"ground truth"``.
    provenance : dict, optional
        JSON-serialisable facts about how the scene was made (kept in the cube's metadata).

    Returns
    -------
    list of tuple
        The two tuples of :func:`cube_layer_data` (the cube band-first, with its wavelengths)
        followed by ``(labels, kwargs, "labels")``. The labels layer's ``features`` has one row
        per label value with its ``class`` name; its metadata has ``class_names`` and
        ``dgc_cube_layer``.
    """
    # A band-first copy, so browsing bands in napari reads contiguous memory.
    cube = Cube(
        data=np.ascontiguousarray(np.moveaxis(scene.cube, -1, 0)),
        band_axis=0,
        wavelengths=scene.wavelengths,
        path=Path(name),
        format="synthetic",
        provenance=dict(provenance or {}),
    )
    colors = {None: "transparent", 0: "transparent"}
    colors.update(
        {value: default_class_color(cls, value) for value, cls in enumerate(scene.class_names) if value}
    )
    labels_kwargs = {
        "name": GROUND_TRUTH_NAME,
        "opacity": 0.5,
        "colormap": DirectLabelColormap(color_dict=colors),
        "features": {"class": list(scene.class_names)},
        "metadata": {"class_names": list(scene.class_names), layer_keys.CUBE_LAYER: name},
    }
    return cube_layer_data(cube, name=name) + [(scene.labels, labels_kwargs, "labels")]


def synthetic_leaf_sample(rows: int = 256, cols: int = 256, seed: int = 0) -> list[LayerDataTuple]:
    """The synthetic leaf scene (301 bands, 400-1000 nm) with its ground truth (npe2 sample).

    Parameters
    ----------
    rows, cols : int
        Scene size in pixels.
    seed : int
        Scene seed (the menu entry uses 0).

    Returns
    -------
    list of tuple
        See :func:`scene_layer_data`.
    """
    scene = make_leaf_scene(rows, cols, seed=seed)
    provenance = {
        "generator": "napari_dgc.datasets.synthetic.make_leaf_scene",
        "rows": rows,
        "cols": cols,
        "n_bands": int(scene.wavelengths.size),
        "seed": seed,
    }
    return scene_layer_data(scene, name="synthetic leaf", provenance=provenance)


def corn_kernel_sample() -> list[LayerDataTuple]:
    """The bundled PlantCV corn kernel cube (ENVI, 31 x 43 x 580, MPL-2.0) (npe2 sample)."""
    return cube_layer_data(open_cube(resource_path(CORN_KERNEL_HEADER)), name="corn kernel")
