"""State of the cluster-merge panel: one clustering, its class mapping, statistics, masks and scores.

:class:`MergeModel` holds what the "DGC: Cluster merge" panel shows and performs every
operation of the panel by calling the engine (:mod:`napari_dgc.analysis.classes`,
:mod:`~napari_dgc.analysis.masks`, :mod:`~napari_dgc.analysis.evaluation`,
:mod:`~napari_dgc.analysis.export`). It knows nothing of Qt or napari: the panel's glue turns
napari layers into a :class:`Clustering` and :class:`MaskInput` objects, and the panel's views
subscribe to the model's psygnal signals. Bad input raises a
:class:`~napari_dgc.errors.DGCError` (or ``OSError`` from the file system); what an operation
did is emitted as a one-line :attr:`MergeModel.message`.

A script drives it without a GUI::

    model = MergeModel()
    model.set_clustering(Clustering("runs/leaf", "step-000060", 4, {"leaf": labels}))
    model.assign([0, 3], 0)
    model.set_granularity(2)  # or: two classes from the merge tree of the clusters
    model.undo()  # back to the hand-made merge
    model.ground_truth.set({"leaf": MaskInput(truth, {0: "background", 1: "tissue"}, "ground truth")})
    print(model.compute_iou().format_table())
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from napari_dgc.analysis.classes import (
    ClassMapping,
    ClusterStatistics,
    SemanticClass,
    cluster_statistics,
    default_class_color,
)
from napari_dgc.analysis.evaluation import EvaluationReport, evaluate_classes, suggest_mapping, write_report
from napari_dgc.analysis.export import export_model_folder, legend_path, write_class_map
from napari_dgc.analysis.masks import (
    DEFAULT_LEGEND,
    DrawnShape,
    Mask,
    mask_from_shapes,
    match_masks,
    parse_legend,
    read_mask,
)
from napari_dgc.analysis.merge_tree import MergeTree, merge_tree
from napari_dgc.errors import DGCError, MappingError, MaskError

#: Classes a new merge starts with.
INITIAL_CLASSES = ("background", "tissue")
#: Mapping states :meth:`MergeModel.undo` can go back to.
HISTORY_LENGTH = 100


class MergeStateError(DGCError):
    """An operation needs something the merge does not have yet (clusters, a selection, scores)."""


@dataclass(frozen=True)
class Clustering:
    """The clusters of one checkpoint over one or more cubes.

    Attributes
    ----------
    run : str
        Run folder of the checkpoint.
    checkpoint : str or None
        Checkpoint id (``None``: the run's chosen or latest one).
    n_clusters : int
        Number of clusters ``K``.
    cluster_maps : dict of str to np.ndarray
        Cube name → ``(rows, cols)`` cluster ids ``0..K-1``.
    cubes : dict of str to array-like
        Cube name → its pixels ``(bands, rows, cols)`` (numpy or lazy; read in row blocks),
        for the cubes whose size matches their cluster map. Cubes left out get no statistics.
    wavelengths : dict of str to sequence of float
        Cube name → band wavelengths in nm, where known.
    """

    run: str
    checkpoint: str | None
    n_clusters: int
    cluster_maps: dict[str, np.ndarray]
    cubes: dict[str, Any] = field(default_factory=dict)
    wavelengths: dict[str, Sequence[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskInput:
    """A ground-truth mask as the viewer holds it, checked only when it is used.

    ``values`` is the layer's own array, not a copy, so strokes painted after the mask was
    handed over count in the next score.

    Attributes
    ----------
    values : np.ndarray
        ``(rows, cols)`` mask values.
    legend : dict of int to str
        Class name of each value.
    name : str
        Where the mask comes from (a layer name), for messages.
    """

    values: np.ndarray
    legend: dict[int, str]
    name: str


def write_class_maps(
    folder: str | Path,
    mapping: ClassMapping,
    cluster_maps: Mapping[str, np.ndarray],
    file_format: str = "tif",
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write each cube's class map as ``<cube>_classes.<format>`` plus its legend into ``folder``.

    Returns
    -------
    list of Path
        The files written, map then legend per cube.

    Raises
    ------
    FileExistsError
        If any target exists and ``overwrite`` is false; then nothing is written, so a
        refused export never leaves maps of two different mappings side by side.
    """
    folder = Path(folder)
    maps = {cube: mapping.apply(labels) for cube, labels in cluster_maps.items()}
    targets = {cube: folder / f"{cube}_classes.{file_format}" for cube in maps}
    if not overwrite:
        for target in targets.values():
            for path in (target, legend_path(target)):
                if path.exists():
                    raise FileExistsError(f"{path} exists; refusing to overwrite it")
    written = []
    for cube, class_map in maps.items():
        written += write_class_map(targets[cube], class_map, mapping, overwrite=overwrite)
    return written


class GroundTruth:
    """The masks a merge is scored against, and optional names for their values.

    Signals
    -------
    changed
        The masks or :attr:`class_names` changed.
    """

    changed = Signal()

    def __init__(self) -> None:
        #: Cube name → its mask, as handed over (checked by :meth:`validated`).
        self.inputs: dict[str, MaskInput] = {}
        self._class_names = ""

    @property
    def class_names(self) -> str:
        """Comma-separated names of mask values 0, 1, ... overriding the masks' legends ("" for none).

        Repeating a name merges values. Parsed when the masks are used, so a bad entry is
        reported by the operation that needs it.
        """
        return self._class_names

    @class_names.setter
    def class_names(self, names: str) -> None:
        self._class_names = names
        self.changed.emit()

    def set(self, masks: Mapping[str, MaskInput]) -> None:
        """Use ``masks`` (cube name → mask)."""
        self.inputs = dict(masks)
        self.changed.emit()

    def validated(self) -> dict[str, Mask]:
        """Cube name → checked mask.

        Raises
        ------
        MaskError
            For malformed :attr:`class_names` or mask values outside the legend.
        """
        names = self._class_names.strip()
        override = parse_legend(names) if names else None
        return {
            cube: Mask(
                np.asarray(mask.values), legend=override or mask.legend, source=f"mask layer {mask.name!r}"
            )
            for cube, mask in self.inputs.items()
        }


class MergeModel:
    """Evented state and operations of a merge of clusters into named classes.

    Signals
    -------
    mapping_changed
        The class mapping changed (edited, loaded, suggested, or refitted to a new ``K``).
    statistics_changed
        The clustering and with it the per-cluster statistics changed.
    selection_changed
        :attr:`selected_clusters` changed.
    pixel_changed : str
        A pixel was picked; the argument describes its cube, position, cluster and class.
    report_changed
        A new IoU report is in :attr:`report`.
    granularity_changed
        :attr:`granularity` or the merge tree (:meth:`merge_tree`) changed.
    history_changed
        :attr:`can_undo` or :attr:`can_redo` may have changed.
    message : str
        What an operation did, in one sentence, for a status line.
    """

    mapping_changed = Signal()
    granularity_changed = Signal()
    history_changed = Signal()
    statistics_changed = Signal()
    selection_changed = Signal()
    pixel_changed = Signal(str)
    report_changed = Signal()
    message = Signal(str)

    def __init__(self) -> None:
        self._mapping = ClassMapping(
            [SemanticClass(name, default_class_color(name, i)) for i, name in enumerate(INITIAL_CLASSES)],
            n_clusters=1,
        )
        self.clustering: Clustering | None = None
        self.statistics: dict[str, ClusterStatistics] = {}
        self.selected_clusters: list[int] = []
        #: The last picked pixel: ``(label, spectrum)``.
        self.pixel: tuple[str, np.ndarray] | None = None
        #: Where the last pixel was picked, ``(cube, row, col)``: described again when the
        #: mapping changes, so its text never names a class it no longer has.
        self._picked: tuple[str, int, int] | None = None
        self.mapping_changed.connect(self._describe_picked_again)
        #: The masks to score against; its ``changed`` signal tells when they change.
        self.ground_truth = GroundTruth()
        self.report: EvaluationReport | None = None
        #: The merge tree of the clustering, built when first needed (``None``: not yet).
        self._tree: MergeTree | None = None
        self._granularity: int | None = None
        #: Earlier and undone ``(mapping, granularity)`` states; mappings are never edited in
        #: place (every edit works on a copy), so the states are shared, not copied.
        self._undo: list[tuple[ClassMapping, int | None]] = []
        self._redo: list[tuple[ClassMapping, int | None]] = []
        #: Whether the last change came from the granularity slider: a drag across several
        #: levels is one step of the history.
        self._sliding = False

    # ------------------------------------------------------------------ clustering
    @property
    def mapping(self) -> ClassMapping:
        """The class mapping being built (read-only: edit it through the model's methods)."""
        return self._mapping

    @property
    def n_clusters(self) -> int:
        """``K`` of the current clustering, 0 without one."""
        return self.clustering.n_clusters if self.clustering is not None else 0

    @property
    def cluster_maps(self) -> dict[str, np.ndarray]:
        """Cube name → cluster ids of the current clustering (empty without one)."""
        return self.clustering.cluster_maps if self.clustering is not None else {}

    def set_clustering(self, clustering: Clustering | None) -> None:
        """Work on ``clustering`` (``None``: there is none).

        The classes are kept; when ``K`` changes, their clusters are dropped.

        Raises
        ------
        MappingError
            If a cluster map does not fit its cube or holds ids outside ``0..K-1``; the model
            keeps the previous clustering.
        """
        if clustering is None:
            self.clustering, self.statistics = None, {}
            self._tree, self._granularity = None, None
            self.statistics_changed.emit()
            self.granularity_changed.emit()
            self.message.emit("No 'DGC clusters' layers yet: train a run or show a checkpoint first.")
            return
        k = clustering.n_clusters
        # Computed before anything changes, so a bad map leaves the model as it was.
        statistics = {
            cube: cluster_statistics(pixels, clustering.cluster_maps[cube], k, band_axis=0)
            for cube, pixels in clustering.cubes.items()
        }
        self.clustering, self.statistics = clustering, statistics
        # Another clustering has another tree; the mapping is no longer one of its levels.
        self._tree, self._granularity, self._sliding = None, None, False
        if k != self._mapping.n_clusters:
            self._mapping = ClassMapping([SemanticClass(c.name, c.color) for c in self._mapping.classes], k)
            # Earlier mappings are for another number of clusters.
            self._undo.clear()
            self._redo.clear()
            self.history_changed.emit()
        self.selected_clusters = [c for c in self.selected_clusters if c < k]
        self.statistics_changed.emit()
        self.mapping_changed.emit()
        self.granularity_changed.emit()
        n_cubes = len(clustering.cluster_maps)
        self.message.emit(f"{n_cubes} cube(s), {k} clusters of checkpoint {clustering.checkpoint}.")

    def pooled_statistics(self) -> ClusterStatistics | None:
        """Statistics of all cubes together, or ``None`` before any were computed."""
        return ClusterStatistics.pooled(self.statistics.values()) if self.statistics else None

    def spectral_axis(self) -> tuple[np.ndarray, str] | None:
        """Give the spectra's x values and their label: wavelengths if known, else band indices."""
        for cube, stats in self.statistics.items():
            n_bands = stats.mean.shape[1]
            wavelengths = self.clustering.wavelengths.get(cube)
            if wavelengths is not None and len(wavelengths) == n_bands:
                return np.asarray(wavelengths, dtype=float), "wavelength (nm)"
            return np.arange(n_bands, dtype=float), "band"
        return None

    def select_clusters(self, clusters: Sequence[int]) -> None:
        """Make ``clusters`` the selection that :meth:`assign_selected` and the spectra use."""
        selected = sorted({int(c) for c in clusters})
        if selected != self.selected_clusters:
            self.selected_clusters = selected
            self.selection_changed.emit()

    def pick_pixel(self, cube: str, row: int, col: int) -> str:
        """Describe a pixel's cluster and class and keep its spectrum in :attr:`pixel`."""
        text = self._describe_pixel(cube, row, col)
        self._picked = (cube, row, col)
        pixels = self.clustering.cubes.get(cube)
        if pixels is not None:
            self.pixel = (f"pixel ({row}, {col})", np.asarray(pixels[:, row, col], dtype=float))
        self.pixel_changed.emit(text)
        return text

    def _describe_pixel(self, cube: str, row: int, col: int) -> str:
        cluster = int(self.cluster_maps[cube][row, col])
        owner = self._mapping.class_of_cluster(cluster)
        class_name = "unassigned" if owner is None else self._mapping.classes[owner].name
        return f"{cube}, row {row}, col {col}: cluster {cluster}, class {class_name}"

    def _describe_picked_again(self) -> None:
        """The mapping changed: emit the picked pixel's new description (its class may differ)."""
        if self._picked is None:
            return
        cube, row, col = self._picked
        labels = self.cluster_maps.get(cube)
        if labels is None or not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
            self._picked = None
            return
        self.pixel_changed.emit(self._describe_pixel(cube, row, col))

    # ------------------------------------------------------------------ mapping edits
    def _adopt(self, mapping: ClassMapping, granularity: int | None = None, *, sliding: bool = False) -> None:
        """Make ``mapping`` the current one, remembering the previous state for :meth:`undo`.

        ``granularity``: the merge-tree level it is (``None``: made by hand). Consecutive
        ``sliding`` changes replace each other in the history instead of adding steps.
        """
        if not (sliding and self._sliding):
            self._undo = [*self._undo[-(HISTORY_LENGTH - 1) :], (self._mapping, self._granularity)]
        self._redo.clear()
        self._sliding = sliding
        self._show(mapping, granularity)

    def _show(self, mapping: ClassMapping, granularity: int | None) -> None:
        """Set the state and emit what changed."""
        level_changed = granularity != self._granularity
        self._mapping, self._granularity = mapping, granularity
        self.mapping_changed.emit()
        if level_changed:
            self.granularity_changed.emit()
        self.history_changed.emit()

    def _edit(self, change: Callable[[ClassMapping], None]) -> None:
        """Apply ``change`` to a copy of the mapping and adopt it only if it validates."""
        edited = copy.deepcopy(self._mapping)
        change(edited)
        edited.validate()
        self._adopt(edited)

    def set_mapping(self, mapping: ClassMapping) -> None:
        """Adopt ``mapping`` (complete or partial, e.g. a saved project's) as one undoable step.

        Raises
        ------
        MappingError
            If it is invalid or for another number of clusters; the mapping stays as it was.
        """
        if mapping.n_clusters != self._mapping.n_clusters:
            raise MappingError(
                f"the mapping is for {mapping.n_clusters} clusters, "
                f"the clustering has {self._mapping.n_clusters}"
            )
        adopted = copy.deepcopy(mapping)  # the caller's object may change later; history states must not
        adopted.validate()
        self._adopt(adopted)

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` has a mapping to go back to."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """Whether :meth:`redo` has an undone mapping to restore."""
        return bool(self._redo)

    def undo(self) -> None:
        """Go back to the mapping (and granularity) before the last change.

        Every change of the mapping is a step: assigning, adding, removing, renaming or
        recolouring a class, a suggestion, a granularity level, a loaded file. A new
        clustering with another ``K`` clears the history.

        Raises
        ------
        MergeStateError
            If there is nothing to undo.
        """
        if not self._undo:
            raise MergeStateError("nothing to undo")
        self._redo.append((self._mapping, self._granularity))
        self._sliding = False
        self._show(*self._undo.pop())
        self.message.emit("Undone.")

    def redo(self) -> None:
        """Restore the mapping the last :meth:`undo` went back from.

        Raises
        ------
        MergeStateError
            If there is nothing to redo (nothing undone, or a change since).
        """
        if not self._redo:
            raise MergeStateError("nothing to redo")
        self._undo.append((self._mapping, self._granularity))
        self._sliding = False
        self._show(*self._redo.pop())
        self.message.emit("Redone.")

    def _class_index(self, index: int | None) -> int:
        if index is None or not 0 <= index < len(self._mapping.classes):
            raise MergeStateError("select a class first")
        return index

    def assign(self, clusters: Sequence[int], class_index: int | None) -> None:
        """Put ``clusters`` into class ``class_index`` (0-based), or into none for ``None``.

        Raises
        ------
        MergeStateError
            If no cluster is given or the class does not exist.
        MappingError
            If a cluster id is outside ``0..K-1``.
        """
        clusters = sorted({int(c) for c in clusters})
        if not clusters:
            raise MergeStateError("select one or more clusters first")
        if class_index is not None:
            self._class_index(class_index)
        self._edit(lambda mapping: mapping.assign(clusters, class_index))
        target = "no class" if class_index is None else self._mapping.classes[class_index].name
        self.message.emit(f"Cluster(s) {clusters} → {target}.")

    def assign_selected(self, class_index: int | None) -> None:
        """:meth:`assign` the :attr:`selected_clusters`."""
        self.assign(self.selected_clusters, class_index)

    def add_class(self, name: str | None = None, color: str | None = None) -> int:
        """Append a class and return its index.

        Parameters
        ----------
        name : str, optional
            A name no class has yet (case-insensitive); default "lesion", then "class 1", ....
        color : str, optional
            ``"#rrggbb"``; default chosen by name.

        Raises
        ------
        MappingError
            For a name already taken or a malformed colour.
        """
        index = len(self._mapping.classes)
        if name is None:
            name = _new_class_name(c.name for c in self._mapping.classes)
        new_class = SemanticClass(name, color or default_class_color(name, index))
        self._edit(lambda mapping: mapping.classes.append(new_class))
        return index

    def remove_class(self, index: int) -> None:
        """Remove class ``index``; its clusters become unassigned."""
        name = self._mapping.classes[self._class_index(index)].name
        self._edit(lambda mapping: mapping.classes.pop(index))
        self.message.emit(f"Removed class {name!r}; its clusters are unassigned.")

    def rename_class(self, index: int, name: str) -> None:
        """Rename class ``index`` (blanks around dropped); a taken or empty name raises ``MappingError``."""
        self._class_index(index)
        self._edit(lambda mapping: setattr(mapping.classes[index], "name", name.strip()))

    def set_class_color(self, index: int, color: str) -> None:
        """Recolour class ``index`` (``"#rrggbb"``, else ``MappingError``)."""
        self._class_index(index)
        self._edit(lambda mapping: setattr(mapping.classes[index], "color", color))

    # ------------------------------------------------------------------ mapping files
    def save_mapping(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the mapping, which must be complete (``MappingError`` names the clusters left out)."""
        saved = self._mapping.save(path, overwrite=overwrite)
        self.message.emit(f"Saved mapping to {saved}.")
        return saved

    def load_mapping(self, path: str | Path) -> ClassMapping:
        """Adopt a mapping file (either JSON form); a file that does not fit leaves the mapping as it was."""
        n_clusters = self.clustering.n_clusters if self.clustering is not None else None
        self._adopt(ClassMapping.load(path, n_clusters=n_clusters))
        self.message.emit(f"Loaded mapping {path}.")
        return self._mapping

    # ------------------------------------------------------------------ granularity
    @property
    def granularity(self) -> int | None:
        """Classes of the merge-tree level the mapping is (``None``: edited by hand since, or never set)."""
        return self._granularity

    def merge_tree(self) -> MergeTree:
        """The clustering's merge tree (:func:`~napari_dgc.analysis.merge_tree.merge_tree`), cubes pooled.

        Raises
        ------
        MergeStateError
            Without statistics (no clustering, or no cube pixels to compute them from).
        MergeTreeError
            If fewer than two clusters have pixels.
        """
        if self._tree is None:
            pooled = self.pooled_statistics()
            if pooled is None:
                raise MergeStateError(
                    "the merge tree needs the clusters' spectra: show a checkpoint's clusters with "
                    "their cube's image layer"
                )
            self._tree = merge_tree(pooled)
        return self._tree

    def set_granularity(self, n_classes: int) -> ClassMapping:
        """Make the mapping the merge tree's level with ``n_classes`` classes.

        Each class keeps the name and colour of the current class it shares most pixels with
        (then of the remaining classes in order, then a new name), so sliding from 2 to 3
        splits "tissue" into "tissue" and a new class rather than renaming everything. The
        mapping can be edited by hand afterwards; consecutive levels are one undo step.

        Raises
        ------
        MergeStateError
            Without statistics to build the tree from.
        MergeTreeError
            If ``n_classes`` is not a level of the tree.
        """
        tree = self.merge_tree()
        groups = tree.mapping_at(n_classes)
        mapping = ClassMapping(
            _name_groups(self._mapping, groups, n_classes, tree.counts), self._mapping.n_clusters
        )
        mapping.validate(complete=True)
        self._adopt(mapping, n_classes, sliding=True)
        empty = [c for c in range(tree.n_clusters) if tree.counts[c] == 0]
        note = f" Cluster(s) {empty} have no pixels: put in the largest class." if empty else ""
        self.message.emit(f"{n_classes} classes from the merge tree of {tree.n_active} clusters.{note}")
        return mapping

    # ------------------------------------------------------------------ masks
    def read_masks(self, paths: Sequence[str | Path]) -> tuple[dict[str, Mask], list[Path]]:
        """Read mask files and pair them with the clustering's cubes by file name.

        Every file is read and checked before anything is returned, so one bad file adds none.

        Returns
        -------
        masks : dict of str to Mask
            Cube name → its mask.
        unmatched : list of Path
            Files whose names match no cube.

        Raises
        ------
        MaskError
            If no file matches a cube, or a file is unreadable, of another size or holds
            unknown values.
        """
        shapes = {cube: labels.shape for cube, labels in self.cluster_maps.items()}
        matched, unmatched = match_masks(paths, shapes)
        if not matched:
            raise MaskError(f"no mask file name matches a cube ({', '.join(shapes) or 'no cubes'})")
        return {cube: read_mask(path, shape=shapes[cube]) for cube, path in matched.items()}, unmatched

    def new_mask_legend(self) -> dict[int, str]:
        """Value → class name for a new mask: the mask class names field, else a mask's legend.

        Without either, :data:`~napari_dgc.analysis.masks.DEFAULT_LEGEND` (0 background,
        1 tissue, 2 lesion).

        Raises
        ------
        MaskError
            For malformed mask class names.
        """
        names = self.ground_truth.class_names.strip()
        if names:
            return parse_legend(names)
        legends = [dict(mask.legend) for mask in self.ground_truth.inputs.values() if mask.legend]
        return legends[0] if legends else dict(DEFAULT_LEGEND)

    def mask_from_shapes(self, cube: str, shapes: Sequence[DrawnShape], source: str) -> Mask:
        """Rasterise drawn shapes into a mask of ``cube``.

        See :func:`napari_dgc.analysis.masks.mask_from_shapes`; the legend starts from
        :meth:`new_mask_legend`, and class names it lacks are added.

        Raises
        ------
        MergeStateError
            If ``cube`` is not a cube of the clustering.
        MaskError
            For shapes that cannot be rasterised or class values out of range.
        """
        labels = self.cluster_maps.get(cube)
        if labels is None:
            raise MergeStateError(f"no clusters of a cube {cube!r}: nothing to draw a mask for")
        return mask_from_shapes(shapes, labels.shape, legend=self.new_mask_legend(), source=source)

    # ------------------------------------------------------------------ scores
    def _suggestion(self, method: str) -> tuple[ClassMapping, str, list[str]]:
        masks = self.ground_truth.validated()
        return suggest_mapping(self.cluster_maps, masks, self._mapping.n_clusters, method=method)

    def apply_suggestion(self, method: str = "auto") -> ClassMapping:
        """Replace the mapping by the best automatic one against the masks.

        Parameters
        ----------
        method : str
            One of :data:`napari_dgc.analysis.evaluation.SUGGESTION_METHODS`.
        """
        mapping, used, notes = self._suggestion(method)
        self._adopt(mapping)
        self.message.emit(" ".join([f"Applied the suggested {used} mapping.", *notes]))
        return self._mapping

    def compute_iou(self, method: str = "auto") -> EvaluationReport:
        """Score the mapping against the masks and keep the report in :attr:`report`.

        With no cluster assigned yet the suggestion (``method``) is scored instead and the
        report says so; the mapping stays as it is.
        """
        cluster_maps, masks = self.cluster_maps, self.ground_truth.validated()
        if len(self._mapping.unassigned_clusters()) == self._mapping.n_clusters:
            mapping, used, notes = self._suggestion(method)
            report = evaluate_classes(cluster_maps, masks, mapping, mapping_source=f"suggested ({used})")
            report.notes[:0] = notes
            summary = (
                f"No clusters assigned yet: these are the scores of the suggested {used} mapping "
                "(press 'Suggest mapping' to use it)."
            )
        else:
            report = evaluate_classes(cluster_maps, masks, self._mapping, mapping_source="panel")
            summary = f"Mean IoU (pooled) {report.pooled.mean_iou:.4f}."
        self.report = report
        self.report_changed.emit()
        self.message.emit(" ".join([summary, *report.notes]))
        return report

    # ------------------------------------------------------------------ exports
    def export_report(
        self,
        *,
        json_path: str | Path | None = None,
        csv_path: str | Path | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write the last IoU report as JSON and/or CSV."""
        if self.report is None:
            raise MergeStateError("compute the IoU first")
        written = write_report(self.report, json_path=json_path, csv_path=csv_path, overwrite=overwrite)
        self.message.emit(f"Wrote {', '.join(map(str, written))}.")
        return written

    def export_class_maps(
        self, folder: str | Path, file_format: str = "tif", *, overwrite: bool = False
    ) -> list[Path]:
        """Write every cube's class map and its legend into ``folder`` (see :func:`write_class_maps`)."""
        written = write_class_maps(folder, self._mapping, self.cluster_maps, file_format, overwrite=overwrite)
        self.message.emit(f"Wrote {len(self.cluster_maps)} class map(s) to {folder}.")
        return written

    def export_model(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the clustering's checkpoint and the (complete) mapping as a model folder."""
        if self.clustering is None:
            raise MergeStateError("no 'DGC clusters' layer: nothing to export")
        path = export_model_folder(
            self.clustering.run,
            folder,
            self._mapping,
            checkpoint_id=self.clustering.checkpoint,
            overwrite=overwrite,
        )
        self.message.emit(f"Wrote model folder {path} (use: napari-dgc segment --classes {path} ...).")
        return path


def _new_class_name(taken: Iterable[str]) -> str:
    """The default name of a new class: "lesion", then "class 1", "class 2", ... not yet taken."""
    taken = {name.lower() for name in taken}
    return next(n for n in ("lesion", *(f"class {i}" for i in range(1, 1000))) if n not in taken)


def _name_groups(
    current: ClassMapping, groups: np.ndarray, n_groups: int, counts: np.ndarray
) -> list[SemanticClass]:
    """Classes of the cluster ``groups``, named and coloured after the ``current`` classes.

    Greedily, the (group, class) pairs sharing most pixels first; then the remaining groups
    (largest first) take the remaining classes in order, then new names. Matched classes keep
    their place in the class list.
    """
    members = [sorted(int(c) for c in np.flatnonzero(groups == g)) for g in range(n_groups)]
    overlap = [
        [int(counts[list(set(ids) & set(cls.clusters))].sum()) for cls in current.classes] for ids in members
    ]
    pairs = sorted(
        (
            (overlap[g][c], -g, -c)
            for g in range(n_groups)
            for c in range(len(current.classes))
            if overlap[g][c]
        ),
        reverse=True,
    )
    class_of: dict[int, int] = {}
    for _, g, c in pairs:
        if -g not in class_of and -c not in class_of.values():
            class_of[-g] = -c
    free = iter(c for c in range(len(current.classes)) if c not in class_of.values())
    for g in range(n_groups):
        if g not in class_of:
            class_of[g] = next(free, None)
    named = sorted((g for g in range(n_groups) if class_of[g] is not None), key=lambda g: class_of[g])
    classes = [
        SemanticClass(current.classes[class_of[g]].name, current.classes[class_of[g]].color, members[g])
        for g in named
    ]
    for g in range(n_groups):
        if class_of[g] is None:
            name = _new_class_name(cls.name for cls in classes)
            classes.append(SemanticClass(name, default_class_color(name, len(classes)), members[g]))
    return classes
