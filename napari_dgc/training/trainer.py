"""One start's training state and its optimiser step (:class:`Trainer`).

One step (see docs/training.md):

1. draw ``batch_size`` overlapping crop pairs (:class:`~napari_dgc.training.sampling.PairStream`);
2. normalise and run the per-pixel spectral stage once per *unique* scene pixel of each pair,
   gather both crops from it, run the spatial stage and mean-shift on the ``2 x batch`` crops;
3. loss = compactness + orthogonality + consistency (symmetric KL between the two crops at
   pixels that show the same scene location) + anchor (cross-entropy of the assignments against
   the start's cosine k-means clusters of the raw spectra, its weight decaying); AdamW step,
   gradient clipping;
4. EMA of the centroids toward the probability-weighted mean embeddings of the step (the
   embeddings of step 2, detached), re-normalised; a cluster without probability mass keeps its
   centroid.

Before the first step that k-means runs on a pixel sample of every cube, and each centroid
starts at the mean embedding of its cluster's pixels in the first batch
(:meth:`Trainer._fit_centroids`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_dgc.config import TrainConfig
from napari_dgc.model.network import DGCModel
from napari_dgc.training import losses
from napari_dgc.training.distributed import SINGLE_PROCESS, ProcessGroup
from napari_dgc.training.events import ACTIVE_SHARE
from napari_dgc.training.normalization import read_pixel_sample
from napari_dgc.training.sampling import CropPair, PairStream, batch_share


def cosine_decay(start: float, final_fraction: float, step: int, total: int) -> float:
    """``start`` decayed along half a cosine to ``final_fraction * start`` at ``step``
    (0-based) ``total - 1``, and held there after it.
    """
    if total <= 1:
        return start
    progress = min(max(step / (total - 1), 0.0), 1.0)
    return start * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class StepResult:
    """What one optimiser step reports (losses weighted, floats)."""

    losses: dict[str, float]
    active_clusters: int  # clusters holding at least ACTIVE_SHARE of the step's hard labels
    usage: np.ndarray  # hard-label share of each cluster in the step


class Trainer:
    """One model, its optimiser and the pair stream; :meth:`step` performs one training step.

    :func:`train` wraps it with run-folder bookkeeping; benchmarks and tuning scripts use it
    directly.
    """

    def __init__(
        self,
        model: DGCModel,
        stream: PairStream,
        config: TrainConfig,
        device: torch.device,
        start: int = 0,
        group: ProcessGroup = SINGLE_PROCESS,
    ) -> None:
        self.model = model.to(device)
        #: the data-parallel group (:mod:`~napari_dgc.training.distributed`): this rank trains on
        #: its share of each batch, and every statistic below is formed over all ranks
        self.group = group
        self.stream = stream
        self.config = config
        self.device = device
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
        )
        # Start 0 keeps the generators of single-start runs; other starts get their own.
        start_key = [start] if start else []
        self.start = start
        #: draws the pixels and k-means++ seedings of the start's k-means (the anchor's clusters)
        self.kick_rng = np.random.default_rng([config.seed, 4, *start_key])
        self.step_count = 0
        #: unit centroids ``(K, bands)`` of the start's cosine k-means of the raw spectra: the
        #: anchor term's targets
        self.anchor_centroids: torch.Tensor | None = None
        #: running average of the model (``optim.average_decay``), made after the first step
        self.averaged: DGCModel | None = None

    @property
    def _schedule_length(self) -> int:
        return self.config.losses.schedule_steps or self.config.steps

    # -- state -----------------------------------------------------------------------------
    def training_state(self) -> dict:
        """State besides the checkpointed model and the optimiser (for checkpoints): JSON, plus
        under ``"tensors"`` the stepped model's weights when the checkpoint stores their average
        and the anchor term's centroids once the spectral start made them.
        """
        tensors = {} if self.averaged is None else {"stepped_model": self.model.state_dict()}
        if self.anchor_centroids is not None:
            tensors["anchor_centroids"] = self.anchor_centroids
        extra = {"tensors": tensors} if tensors else {}
        return {
            **extra,
            "step": self.step_count,
            "sampler": self.stream.state_dict(),
            "kick_rng": self.kick_rng.bit_generator.state,
            "start": self.start,
        }

    def load_training_state(self, state: dict) -> None:
        """Restore :meth:`training_state` output, every field checked before anything changes.

        Raises
        ------
        ValueError
            Naming the first field that is missing, of the wrong type or out of range (a
            damaged ``state.json``); the trainer is left as it was. ``ConfigError`` (a
            ``ValueError``) if the sampler was saved for another number of cubes.
        """

        def count(key: str, value, low: int = 0, high: int = 2**53) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"training state {key!r} = {value!r} is not a whole number in {low}..{high}")
            return value

        def generator_state(key: str, value) -> dict:
            try:  # a fresh generator refuses any state that is not a valid PCG64 one
                np.random.PCG64().state = value
            except (TypeError, ValueError, KeyError, OverflowError) as error:
                raise ValueError(
                    f"training state {key!r} is not a random generator state ({error})"
                ) from None
            return value

        if not isinstance(state, dict):
            raise ValueError("the training state is not an object")
        stepped = (
            state.get("tensors", {}).get("stepped_model") if isinstance(state.get("tensors"), dict) else None
        )
        if (stepped is None) != (self.config.optim.average_decay == 0):
            raise ValueError(
                "the training state has no stepped model weights next to the averaged ones"
                if stepped is None
                else "the training state has stepped model weights but the run averages none"
            )
        if stepped is not None and (
            not isinstance(stepped, dict) or set(stepped) != set(self.model.state_dict())
        ):
            raise ValueError("the training state's stepped model weights do not fit the model")
        anchor = state["tensors"].get("anchor_centroids") if isinstance(state.get("tensors"), dict) else None
        n_bands = self.model.n_bands
        if anchor is not None and (
            not isinstance(anchor, torch.Tensor)
            or tuple(anchor.shape) != (self.model.n_clusters, n_bands)
            or not bool(torch.isfinite(anchor).all())
        ):
            raise ValueError(
                f"the training state's anchor centroids are not "
                f"{self.model.n_clusters} x {n_bands} finite numbers"
            )
        # Fields earlier versions also stored (fidelity_rng, usage_ema) are ignored.
        missing = sorted({"step", "sampler", "kick_rng", "start"} - state.keys())
        if missing:
            raise ValueError(f"training state fields missing: {', '.join(missing)}")
        sampler = state["sampler"]
        if not isinstance(sampler, dict) or not isinstance(sampler.get("halton_counts"), list):
            raise ValueError("training state 'sampler' is invalid")
        generator_state("sampler.rng", sampler.get("rng"))
        count("sampler.epoch", sampler.get("epoch"))
        count(
            "sampler.order_position", sampler.get("order_position"), 0, max(len(self.stream.sources) - 1, 0)
        )
        count("sampler.pairs_from_current", sampler.get("pairs_from_current"), 0, self.stream.pairs_per_cube)
        for value in sampler["halton_counts"]:
            count("sampler.halton_counts", value)
        step = count("step", state["step"], 0, 10**9)
        start = count("start", state["start"], 0, 10**6)
        kick = generator_state("kick_rng", state["kick_rng"])
        self.stream.load_state_dict(sampler)  # checks the number of cubes before changing anything
        self.step_count = step
        self.kick_rng.bit_generator.state = kick
        self.start = start
        self.anchor_centroids = None if anchor is None else anchor.to(self.device, torch.float32)
        if stepped is not None:  # the model holds the checkpoint's averaged weights
            self.averaged = copy.deepcopy(self.model).requires_grad_(False)
            self.model.load_state_dict(stepped)

    # -- one step --------------------------------------------------------------------------
    def _crop_features(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectral stage once per unique pixel of each pair, gathered into ``2B`` crops.

        Returns the features ``(2B, D, S, S)`` and ``index`` ``(2B * S * S,)``: row ``i`` of the
        flattened crops is unique pixel ``index[i]`` of the pairs (their ``pixels`` stacked).
        """
        model = self.model
        size = self.config.data.crop_size
        sequence_blocks, index_blocks, offset = [], [], 0
        for pair in pairs:
            # Normalisation, band shift and resampling as one matrix product per pair.
            raw = torch.from_numpy(pair.pixels).to(self.device)
            sequence_blocks.append(model.spectral_input(raw, pair.spectral_shift))
            index_blocks += [pair.index_a + offset, pair.index_b + offset]
            offset += pair.pixels.shape[0]
        features = model.band_features(torch.cat(sequence_blocks))
        index = torch.from_numpy(np.stack(index_blocks)).to(self.device).reshape(-1)
        crops = features[index].reshape(2 * len(pairs), size, size, -1)
        return crops.permute(0, 3, 1, 2), index

    def _raw_crops(self, pairs: list[CropPair]) -> torch.Tensor:
        """The pairs' ``2B`` crops as raw spectra ``(2B, bands, S, S)`` (no spectral shift)."""
        crops = [pair.pixels[index] for pair in pairs for index in (pair.index_a, pair.index_b)]
        return torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2)

    def _forward(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat embeddings ``(N, D)``, log-probabilities ``(N, K)`` and ``index`` from
        :meth:`_crop_features` (row ``i`` shows unique pixel ``index[i]``).
        """
        features, index = self._crop_features(pairs)
        z = self.model.spatial(features)
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return z_flat, self.model.log_assign(z), index

    def _matched_rows(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor]:
        crop_pixels = self.config.data.crop_size**2
        rows_a = [pair.match_a + (2 * j) * crop_pixels for j, pair in enumerate(pairs)]
        rows_b = [pair.match_b + (2 * j + 1) * crop_pixels for j, pair in enumerate(pairs)]
        return (
            torch.from_numpy(np.concatenate(rows_a)).to(self.device),
            torch.from_numpy(np.concatenate(rows_b)).to(self.device),
        )

    def step(self) -> StepResult:
        """Draw a batch of pairs, take one optimiser step and update the centroids."""
        config, model = self.config, self.model
        rank, world_size = self.group.rank, self.group.world_size
        # The data-dependent initialisation sees the whole batch on every rank, as in one process.
        whole = self.step_count == 0
        pairs = self.stream.next_batch(config.data.batch_size, rank, world_size, whole=whole)
        model.train()
        if whole:
            model.initialize_from_data(self._raw_crops(pairs))
            self._fit_centroids(
                pairs, read_pixel_sample(self.stream.sources, config.data.normalization_pixels)
            )
        if whole and world_size > 1:  # rank 0's initialised model is everyone's, to the last bit
            for tensor in model.state_dict().values():
                tensor.copy_(self._broadcast(tensor))
            self.anchor_centroids = self._broadcast(self.anchor_centroids)
            pairs = pairs[batch_share(len(pairs), rank, world_size)]
        z, log_p, index = self._forward(pairs)
        p = log_p.exp()
        centroids = model.centroids
        rows_a, rows_b = self._matched_rows(pairs)
        terms = {
            "compact": config.losses.weight_compact * losses.compactness_loss(z, p, centroids),
            "orth": config.losses.weight_orth * losses.orthogonality_loss(centroids),
            "consistency": config.losses.weight_consistency
            * losses.consistency_loss(log_p[rows_a], log_p[rows_b]),
            "anchor": self._anchor_term(pairs, log_p, index),
        }
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.group.average_gradients(model.parameters())  # before clipping: every rank steps alike
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        self.optimizer.step()

        with torch.no_grad():
            z, p = z.detach(), p.detach()
            self._update_centroids(z, p)
            self._update_average()
            counts = torch.bincount(p.argmax(dim=1), minlength=model.n_clusters).double()
            usage = self._all_reduce_sum(counts) / (p.shape[0] * world_size)
        self.step_count += 1
        reported = {name: float(value.detach()) for name, value in terms.items()}
        reported["total"] = float(total.detach())
        usage_np = usage.cpu().numpy()
        return StepResult(reported, int((usage_np >= ACTIVE_SHARE).sum()), usage_np)

    @property
    def checkpoint_model(self) -> DGCModel:
        """The model a checkpoint stores: the running average of the weights, or the model."""
        return self.averaged if self.averaged is not None else self.model

    def _update_average(self) -> None:
        """Move the averaged model toward the model just stepped.

        The decay ramps up as ``(1 + t) / (10 + t)`` to ``optim.average_decay`` so the average
        does not drag the first steps' random weights along (TensorFlow's
        ``ExponentialMovingAverage(num_updates=...)``).
        """
        decay = self.config.optim.average_decay
        if decay == 0:
            return
        if self.averaged is None:
            self.averaged = copy.deepcopy(self.model).requires_grad_(False)
            return
        decay = min(decay, (1 + self.step_count) / (10 + self.step_count))
        averaged = self.averaged.state_dict()
        learned = {name for name, _ in self.model.named_parameters()} | {"centroids"}
        for name, value in self.model.state_dict().items():
            if name in learned:
                averaged[name].mul_(decay).add_(value, alpha=1 - decay)
            else:  # fixed input normalisation: copied bit for bit, so every checkpoint shares it
                averaged[name].copy_(value)
        averaged["centroids"].copy_(F.normalize(averaged["centroids"], dim=1))

    def _fit_centroids(self, pairs: list[CropPair], spectra: np.ndarray, max_pixels: int = 4096) -> None:
        """Start the centroids from a cosine k-means of raw ``spectra`` ``(N, bands)``.

        ``spectra`` is a sample of every cube (:func:`read_pixel_sample`), not the first batch,
        whose few crops of one cube can miss or under-represent a material. The k-means is the
        best of ``centroids.fit_inits`` spherical k-means fits (lowest ``1 - cos`` inertia) on
        at most ``max_pixels`` of them, drawn with the kick generator (saved in checkpoints, so
        resuming stays exact). Cosine k-means is the strongest simple baseline:
        brightness-invariant, and uncentred, unlike the model's inputs. Its centroids become the
        anchor term's targets, and each model centroid the mean embedding of its cluster's
        pixels in ``pairs``, so training starts from that partition and keeps to it.
        """
        with torch.no_grad():
            points = F.normalize(torch.from_numpy(spectra).to(self.device), dim=1)
            sample = points
            if points.shape[0] > max_pixels:
                rows = self.kick_rng.choice(points.shape[0], max_pixels, replace=False)
                sample = points[torch.from_numpy(rows).to(points.device)]
            fits = [
                spherical_kmeans(sample, self.model.n_clusters, self.kick_rng)
                for _ in range(self.config.centroids.fit_inits)
            ]
            inertia = [float((1.0 - (sample @ c.T).max(dim=1).values).sum()) for c in fits]
            self.anchor_centroids = fits[int(np.argmin(inertia))].clone()
            z, _, index = self._forward(pairs)
            labels = self._anchor_labels(pairs)[index]
            sums = torch.zeros_like(self.model.centroids).index_add_(0, labels, z)
            chosen = sums.norm(dim=1, keepdim=True) > 0  # a cluster no pixel chose keeps its random centroid
            self.model.centroids.copy_(torch.where(chosen, F.normalize(sums, dim=1), self.model.centroids))

    @torch.no_grad()
    def _anchor_labels(self, pairs: list[CropPair]) -> torch.Tensor:
        """The nearest anchor centroid (by the cosine of the raw spectra) of each unique pixel
        of the pairs ``(P,)``; per pair, so the batch's spectra are never copied whole.
        """
        centroids = self.anchor_centroids.T
        return torch.cat(
            [
                (F.normalize(torch.from_numpy(pair.pixels).to(self.device), dim=1) @ centroids).argmax(dim=1)
                for pair in pairs
            ]
        )

    def _anchor_term(self, pairs: list[CropPair], log_p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the assignments ``log_p`` against the anchor cluster of each
        pixel (:meth:`_anchor_labels`); row ``i`` of ``log_p`` shows unique pixel ``index[i]``.
        """
        losses_config = self.config.losses
        if self.anchor_centroids is None or losses_config.weight_anchor == 0:
            return log_p.new_zeros(())
        weight = cosine_decay(
            losses_config.weight_anchor,
            losses_config.anchor_final_fraction,
            self.step_count,
            self._schedule_length,
        )
        return weight * F.nll_loss(log_p, self._anchor_labels(pairs)[index])

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the data-parallel ranks (``tensor`` itself in one process)."""
        return self.group.all_reduce_sum(tensor)

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (``tensor`` itself in one process)."""
        return self.group.broadcast(tensor)

    def _update_centroids(self, z: torch.Tensor, p: torch.Tensor) -> None:
        """EMA toward the probability-weighted mean embeddings, re-normalised.

        A cluster without mass in the step keeps its centroid: moving it elsewhere (the
        re-seeding of earlier versions) took pixels from a live cluster, which at K above the
        number of materials emptied clusters one after another (docs/training.md, twelfth pass).
        """
        decay, centroids = self.config.centroids.ema_decay, self.model.centroids
        mass = self._all_reduce_sum(p.sum(dim=0))
        means = F.normalize(self._all_reduce_sum(p.T @ z), dim=1)
        has_mass = (mass > 0).unsqueeze(1)
        updated = torch.where(has_mass, decay * centroids + (1 - decay) * means, centroids)
        centroids.copy_(F.normalize(updated, dim=1))


def _draw_far_embedding(z: torch.Tensor, centroids: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One row of ``z`` drawn with probability proportional to ``(1 - cos)^2`` to its nearest
    row of ``centroids`` (uniformly when there are none or all distances are zero).
    """
    if centroids.shape[0] == 0:
        weights = torch.ones(z.shape[0], dtype=torch.float64)
    else:
        distance = (1.0 - (z @ centroids.T).max(dim=1).values).clamp_min(0)
        weights = distance.double().cpu() ** 2
    total = float(weights.sum())
    if total <= 0:
        weights, total = torch.ones(z.shape[0], dtype=torch.float64), float(z.shape[0])
    cumulative = torch.cumsum(weights, dim=0)
    index = int(torch.searchsorted(cumulative, torch.tensor([rng.random() * total], dtype=torch.float64)))
    return z[min(index, z.shape[0] - 1)]


def spherical_kmeans(
    z: torch.Tensor, n_clusters: int, rng: np.random.Generator, iterations: int = 10, max_pixels: int = 4096
) -> torch.Tensor:
    """Unit-norm centroids ``(K, D)`` of the unit embeddings ``z`` ``(N, D)``: k-means++
    seeding with the distance ``1 - cos``, then Lloyd iterations on the sphere, on at most
    ``max_pixels`` rows drawn with ``rng``.
    """
    if z.shape[0] > max_pixels:
        z = z[torch.from_numpy(rng.choice(z.shape[0], max_pixels, replace=False)).to(z.device)]
    centroids = z.new_zeros((0, z.shape[1]))
    for _ in range(n_clusters):
        centroids = torch.cat([centroids, _draw_far_embedding(z, centroids, rng)[None]])
    for _ in range(iterations):
        labels = (z @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, z)
        # A cluster left empty keeps its centroid.
        centroids = torch.where(sums.norm(dim=1, keepdim=True) > 0, F.normalize(sums, dim=1), centroids)
    return centroids
