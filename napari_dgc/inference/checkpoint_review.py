"""Review the checkpoints of a training run: cached segmentations and stability figures.

The DGC report shows that no single number tells when to stop training: clusters "ignite",
then over-merge. A person therefore browses the checkpoints and picks one. This module holds
the engine side of that browser (no Qt): it segments a fixed set of cubes at any checkpoint,
caches the label maps (least recently used first out, bounded in bytes) and computes, per
checkpoint, the figures drawn along the timeline:

* NMI between the label maps of this checkpoint and of the previous one (how much changed),
* the number of active clusters and the normalised entropy of cluster usage,
* the spectral separation of the clusters: the Calinski–Harabasz index of the label maps on
  the cubes' normalised, resampled spectra (a fixed sample of at most
  :data:`SEPARATION_PIXELS` pixels, from the cubes whose spectral input is cached),
* the losses the training recorded with the checkpoint.

Every checkpoint of a run shares the model's normalisation and band resampling, so the first
step of the model gives the same result for a cube at every checkpoint. The review keeps that
result per cube (:class:`~napari_dgc.inference.segmentation.SpectralInput`, ``4 * spectral_length`` bytes
per pixel: 32 MiB for a 512 x 512 cube at the default 32 bins, a tenth of the 301-band cube),
computed as a by-product of the first segmentation; later checkpoints segment from it and skip
reading the raw bands. Its entries carry a fingerprint of the normalisation and are replaced,
never reused, when a model's differs. This cache has its own byte budget: cubes are kept in
the order they are first segmented until it is full; the others are read from the cube at every
checkpoint, as without the cache.

All figures pool the pixels of every reviewed cube. The class is thread-safe: the training
worker, a review worker and the GUI thread may call it at the same time; a checkpoint is
segmented at most once however many threads ask for it concurrently.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.errors import CheckpointError
from napari_dgc.inference.segmentation import (
    SpectralInput,
    cube_bands,
    segment_cube,
    spectral_input_fingerprint,
)
from napari_dgc.io import Cube
from napari_dgc.metrics import (
    active_clusters,
    calinski_harabasz,
    cluster_usage,
    normalized_mutual_info,
    usage_entropy,
)
from napari_dgc.run_folder import CheckpointInfo, RunDirectory
from napari_dgc.run_folder.preparation_file import run_preparation

if TYPE_CHECKING:
    from napari_dgc.model.network import DGCModel

#: A cube to review: a lazily read :class:`~napari_dgc.io.Cube` or a band-last array.
CubeInput = Cube | np.ndarray

#: Clusters holding at most this fraction of the reviewed pixels do not count as active
#: (a handful of stray pixels is noise, not an entity type).
ACTIVE_MIN_FRACTION = 1e-3

#: Pixels (pooled over the cubes) on which the spectral separation is computed: the same
#: pixels at every checkpoint, so the figure compares checkpoints, not samples.
SEPARATION_PIXELS = 20_000


@dataclass(frozen=True)
class CheckpointFigures:
    """Stability figures of one checkpoint over the reviewed cubes.

    Attributes
    ----------
    checkpoint_id, step
        The checkpoint.
    nmi_to_previous
        NMI between this checkpoint's label maps and the previous checkpoint's; ``None`` for
        the first checkpoint of the run.
    active_clusters
        Clusters holding more than :data:`ACTIVE_MIN_FRACTION` of the pixels.
    usage_entropy
        Entropy of cluster usage divided by ``log K``: 1 when all clusters are used equally.
    spectral_separation
        Calinski–Harabasz index of the clusters on the normalised spectra (higher: the
        clusters' mean spectra lie further apart relative to their spread); ``None`` when no
        reviewed cube's spectral input is cached (cubes larger than the cache's budget).
    losses
        Loss terms recorded by the training with this checkpoint (may be empty).
    """

    checkpoint_id: str
    step: int
    nmi_to_previous: float | None
    active_clusters: int
    usage_entropy: float
    spectral_separation: float | None = None
    losses: dict[str, float] = field(default_factory=dict)


def _cube_shape_hw(cube: CubeInput) -> tuple[int, int]:
    return tuple(cube.shape_hw) if isinstance(cube, Cube) else tuple(np.shape(cube)[:2])


def recorded_losses(info: CheckpointInfo) -> dict[str, float]:
    """The numeric loss terms stored with a checkpoint (``stats["losses"]``), if any."""
    losses = info.stats.get("losses", {}) if isinstance(info.stats, dict) else {}
    return {
        str(name): float(value)
        for name, value in losses.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class CheckpointReview:
    """Segment a fixed set of cubes at the checkpoints of one run, with caching.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (it may still be growing: :meth:`checkpoints` re-reads it).
    cubes : Mapping[str, Cube or np.ndarray]
        The raw cubes to segment, by a caller-chosen key (the GUI uses its layer identity).
        Arrays are band-last ``(rows, cols, bands)``. They are prepared as the run's were
        (:func:`~napari_dgc.run_folder.preparation_file.run_preparation`): with binning, the
        label maps are smaller than the cubes.
    device : str
        Torch device the models run on.
    tile : int
        Tile size passed to :func:`~napari_dgc.inference.segmentation.segment_cube`.
    cache_bytes : int
        Budget of the label-map cache; the least recently used checkpoints are dropped first
        (their figures, being tiny, are kept).
    spectral_cache_bytes : int
        Budget of the per-cube spectral-input cache (see the module docstring); 0 turns it off.

    Raises
    ------
    CheckpointError
        If the run folder is invalid or a cube's band count differs from the run's.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cubes: Mapping[str, CubeInput],
        *,
        device: str = "cpu",
        tile: int = 256,
        cache_bytes: int = 512 * 2**20,
        spectral_cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.run = RunDirectory.open(run_dir)
        # The cubes are seen as the run's cubes were in training (band crop, references, binning).
        preparation = run_preparation(self.run)
        cubes = {key: preparation.apply(cube, f"cube {key!r}") for key, cube in cubes.items()}
        for key, cube in cubes.items():
            if cube_bands(cube) != self.run.n_bands:
                raise CheckpointError(
                    f"{self.run.path}: cube {key!r} has {cube_bands(cube)} bands but the run "
                    f"was trained on {self.run.n_bands}"
                )
        self.cubes: dict[str, CubeInput] = dict(cubes)
        self.device = device
        self.tile = tile
        self.cache_bytes = cache_bytes
        self.spectral_cache_bytes = spectral_cache_bytes
        self.n_clusters = self.run.config.model.n_clusters
        self._lock = threading.Lock()
        self._labels: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._figures: dict[str, CheckpointFigures] = {}
        self._segmenting: dict[str, threading.Lock] = {}
        self._spectral: dict[str, SpectralInput] = {}
        self._separation_rows: dict[str, np.ndarray] = {}

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.run.path

    def checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints of the run in training order (all starts in turn), re-read from disk
        (a live run grows).
        """
        return self.run.checkpoints()

    def cached_labels(self, checkpoint_id: str) -> dict[str, np.ndarray] | None:
        """Label maps of a checkpoint by cube key if cached, else ``None`` (never computes)."""
        with self._lock:
            labels = self._labels.get(checkpoint_id)
            if labels is not None:
                self._labels.move_to_end(checkpoint_id)
            return labels

    def cached_figures(self, checkpoint_id: str) -> CheckpointFigures | None:
        """Figures of a checkpoint if already computed, else ``None`` (never computes)."""
        with self._lock:
            return self._figures.get(checkpoint_id)

    def labels(self, checkpoint_id: str, *, workers: int | None = None) -> dict[str, np.ndarray]:
        """Label maps ``(rows, cols)`` int32 of every cube at a checkpoint, computed once.

        ``workers``: tiles segmented at once (see :func:`~napari_dgc.inference.segmentation.segment_cube`).

        Raises
        ------
        CheckpointError
            If the checkpoint does not exist or cannot be loaded.
        """
        cached = self.cached_labels(checkpoint_id)
        if cached is not None:
            return cached
        with self._lock:
            segmenting = self._segmenting.setdefault(checkpoint_id, threading.Lock())
        with segmenting:  # a second caller waits for the first instead of redoing the work
            cached = self.cached_labels(checkpoint_id)
            if cached is not None:
                return cached
            model = self.run.load_model(checkpoint_id, device=self.device)
            labels = {key: self._segment(model, key, workers) for key in self.cubes}
            self._store(checkpoint_id, labels)
        with self._lock:
            self._segmenting.pop(checkpoint_id, None)
        return labels

    def _segment(self, model: DGCModel, key: str, workers: int | None) -> np.ndarray:
        """Labels of one cube, from its cached spectral input when the model's matches."""
        fingerprint = spectral_input_fingerprint(model)
        with self._lock:
            prepared = self._spectral.get(key)
        if prepared is not None and prepared.fingerprint != fingerprint:
            prepared = None
        options = dict(tile=self.tile, device=self.device, workers=workers)
        if prepared is not None:
            return segment_cube(model, prepared, **options).labels
        rows, cols = _cube_shape_hw(self.cubes[key])
        keep = rows * cols * model.spectral_length * 4 <= self.spectral_cache_bytes
        result = segment_cube(model, self.cubes[key], return_spectral_input=keep, **options)
        if keep:
            self._store_spectral(key, result.spectral_input)
        return result.labels

    def _store_spectral(self, key: str, prepared: SpectralInput) -> None:
        with self._lock:
            # Entries of another normalisation are useless now; the others stay, first come
            # first kept (every checkpoint visits all cubes in turn, so evicting the least
            # recently used would evict each cube just before it is needed again).
            self._spectral = {
                other: entry
                for other, entry in self._spectral.items()
                if other != key and entry.fingerprint == prepared.fingerprint
            }
            used = sum(entry.nbytes for entry in self._spectral.values())
            if used + prepared.nbytes <= self.spectral_cache_bytes:
                self._spectral[key] = prepared

    def _store(self, checkpoint_id: str, labels: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._labels[checkpoint_id] = labels
            self._labels.move_to_end(checkpoint_id)
            total = sum(a.nbytes for maps in self._labels.values() for a in maps.values())
            # Keep at least the newest entry even if it alone exceeds the budget.
            while total > self.cache_bytes and len(self._labels) > 1:
                _, dropped = self._labels.popitem(last=False)
                total -= sum(a.nbytes for a in dropped.values())

    def figures(self, checkpoint_id: str, *, workers: int | None = None) -> CheckpointFigures:
        """Stability figures of a checkpoint (segments it and its predecessor if needed).

        ``workers`` is passed to :meth:`labels`.

        Raises
        ------
        CheckpointError
            If the checkpoint is not in the run.
        """
        cached = self.cached_figures(checkpoint_id)
        if cached is not None:
            return cached
        infos = self.checkpoints()
        index = next((i for i, info in enumerate(infos) if info.checkpoint_id == checkpoint_id), None)
        if index is None:
            raise CheckpointError(f"{self.path}: no checkpoint {checkpoint_id!r} in this run")
        labels = self.labels(checkpoint_id, workers=workers)
        current = self._pooled(labels)
        nmi = None
        # The previous checkpoint of the same start: the selected start continues after the
        # other starts' checkpoints, which are not its past.
        same_start = [info for info in infos[:index] if info.start == infos[index].start]
        if same_start:
            previous = self._pooled(self.labels(same_start[-1].checkpoint_id, workers=workers))
            nmi = normalized_mutual_info(previous, current)
        usage = cluster_usage(current, self.n_clusters)
        result = CheckpointFigures(
            checkpoint_id=checkpoint_id,
            step=infos[index].step,
            nmi_to_previous=nmi,
            active_clusters=active_clusters(current, self.n_clusters, min_fraction=ACTIVE_MIN_FRACTION),
            usage_entropy=usage_entropy(usage, normalized=True),
            spectral_separation=self._spectral_separation(labels),
            losses=recorded_losses(infos[index]),
        )
        with self._lock:
            self._figures[checkpoint_id] = result
        return result

    def _spectral_separation(self, labels: dict[str, np.ndarray]) -> float | None:
        """Calinski–Harabasz index of ``labels`` on the cached spectral inputs (see the module
        docstring); None without any.
        """
        with self._lock:
            prepared = {key: self._spectral[key] for key in self.cubes if key in self._spectral}
        if not prepared:
            return None
        features, pooled = [], []
        for key, entry in prepared.items():
            values = entry.values.reshape(-1, entry.values.shape[-1])
            rows = self._separation_rows.get(key)
            if rows is None:  # drawn once per cube, so every checkpoint uses the same pixels
                count = min(values.shape[0], SEPARATION_PIXELS // len(self.cubes))
                rows = np.sort(np.random.default_rng(0).choice(values.shape[0], count, replace=False))
                with self._lock:
                    rows = self._separation_rows.setdefault(key, rows)
            features.append(values[rows])
            pooled.append(labels[key].ravel()[rows])
        return calinski_harabasz(np.concatenate(features), np.concatenate(pooled))

    def _pooled(self, labels: dict[str, np.ndarray]) -> np.ndarray:
        """All cubes' labels as one flat array, in the fixed order of :attr:`cubes`."""
        if not labels:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([labels[key].ravel() for key in self.cubes])

    def checkpoints_without_figures(self) -> list[str]:
        """Checkpoint ids (in training order) whose figures are not computed yet."""
        with self._lock:
            done = set(self._figures)
        return [info.checkpoint_id for info in self.checkpoints() if info.checkpoint_id not in done]
