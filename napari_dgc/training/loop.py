"""Training as a generator of typed events, shared by the CLI and the napari widget.

``for event in train(cubes, config, run_dir): ...`` yields one :class:`ProgressEvent` per
optimiser step, a :class:`CheckpointEvent` after each checkpoint is fully written and a
:class:`FinishedEvent` at the end. Pausing is not pulling the next event; stopping is closing
the generator (the run folder then lists only complete checkpoints); ``resume=True`` continues
from the latest checkpoint and ends with exactly the weights of an uninterrupted run.

One step (see docs/training.md):

1. draw ``batch_size`` overlapping crop pairs (:class:`~napari_dgc.training.sampling.PairStream`);
2. normalise and run the per-pixel spectral stage once per *unique* scene pixel of each pair,
   gather both crops from it, run the spatial stage and mean-shift on the ``2 x batch`` crops;
3. loss = compactness + orthogonality + balance (-H of cluster usage) + uniform assignment
   (cross-entropy against pseudo-labels with fixed cluster quotas: an EMA of the observed usage
   floored at ``uniform_floor / K`` by default, exactly N/K as in the papers on request) +
   consistency (symmetric KL between the two crops at pixels that show the same scene
   location); AdamW step, gradient clipping;
4. EMA of the centroids toward the probability-weighted mean embeddings of the step (the
   embeddings of step 2, detached); a cluster whose share of the step's probability mass is
   below ``dead_threshold`` is re-seeded at a poorly explained embedding (or kicked at random,
   as the reference does); re-normalisation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_dgc.training import losses
from napari_dgc.errors import CheckpointError, ConfigError
from napari_dgc.metrics import calinski_harabasz, usage_entropy
from napari_dgc.model.network import DGCModel, ModelConfig, reject_unknown_settings
from napari_dgc.training.normalization import compute_band_statistics
from napari_dgc.training.sampling import CropPair, PairStream, check_crop_fits, open_sources

SCHEDULES = ("constant", "linear", "cosine")
LOSS_TERMS = ("total", "compact", "orth", "balance", "uniform", "consistency", "fidelity")


@dataclass
class TrainConfig:
    """Training settings; defaults follow the papers' reference values except where noted.

    Attributes beyond the architecture contract
    -------------------------------------------
    balance_sign : {"paper", "reference"}
        ``"paper"`` minimises -H of cluster usage (maximises entropy); ``"reference"`` adds +H as
        the reference implementation does (rewards collapse; for comparison only).
    uniform_schedule, balance_schedule, kick_schedule : {"constant", "linear", "cosine"}
        Decay of the uniform-assignment weight / balance weight / kick size from its value to
        ``*_final_fraction`` of it after ``schedule_steps`` steps (the whole run if ``None``),
        staying there afterwards.
    dead_threshold : float
        A cluster whose share of a step's probability mass is below this fraction is "dead"
        and kicked; also the share of hard labels a cluster needs to count as active.
    max_spectral_shift : int
        Largest random band shift of the augmentation.
    normalization_pixels : int
        Pixel budget of the dataset-level normalisation statistics.
    ema_second_pass : bool
        Feed the EMA from a second, no-grad forward pass after the optimiser step (as the
        reference does) instead of the step's own detached embeddings.
    uniform_target : {"usage", "uniform"}
        Cluster shares of the uniform-assignment pseudo-labels. ``"uniform"``: exactly ``N/K``
        each (the papers). ``"usage"``: an EMA of the observed cluster usage with every share
        floored at ``uniform_floor / K``, so the term still revives dying clusters but no
        longer forces imbalanced classes to equal size (see docs/training.md).
    uniform_floor : float
        Smallest target share of a cluster relative to ``1/K`` (``"usage"`` target only; 1.0
        is the uniform target).
    usage_ema_decay : float
        Decay of the EMA of cluster usage behind the ``"usage"`` target (starts at ``1/K``).
    dead_policy : {"reseed", "kick"}
        What happens to a dead cluster: ``"kick"`` adds random noise of size ``kick`` to its
        centroid (the reference); ``"reseed"`` moves it to the embedding of a pixel of the step
        drawn with probability proportional to its squared distance ``(1 - cos)^2`` from the
        nearest live centroid (k-means++ style: pixels the live clusters explain worst).
    centroid_init : {"random", "kmeans++"}
        ``"random"``: random unit vectors (the reference). ``"kmeans++"``: before the first
        step, spherical k-means (k-means++ seeding, a few Lloyd iterations) on the embeddings
        of the first batch.
    centroid_fit_step : int
        Before this step (0: never), once, the centroids are replaced by a spherical k-means
        of the step's embeddings, the best (lowest ``1 - cos`` inertia) of
        ``centroid_fit_inits`` k-means++ seedings. The first optimiser steps spread the
        embedding along the spectra faster than the centroid EMA follows, so the random
        starting centroids would otherwise fix an arbitrary split (see docs/training.md,
        fifth quality pass).
    centroid_fit_inits : int
        k-means++ seedings tried by the ``centroid_fit_step`` fit.
    restarts : int
        Starts tried by a new run (as k-means' ``n_init``): start 0 is the run's seed, the
        others draw other initial weights and centroids (same crop pairs). Each trains
        ``restart_steps`` steps; the one whose hard labels separate the *spectra* best
        (:func:`spectral_separation`: Calinski–Harabasz index of the labels on the normalised
        spectral inputs of ``selection_windows`` fixed windows of the cubes) continues. Every
        start writes its checkpoints as it trains (ids ``start1-step-000100`` ... for starts
        after the first), always one at ``restart_steps`` that records its score as
        ``separation``; ``run.json`` records the selected start. 1: no selection.
    restart_steps : int
        Steps each start trains before the selection (at most ``steps``; fixed when the run
        is created).
    selection_windows : int
        Windows of ``crop_size`` pixels (plus the model's receptive radius), drawn once from
        the cubes with the run's seed, whose pixels score the starts.
    weight_fidelity : float
        Weight of the spectral-fidelity term (*deviation*, not in the papers): the squared
        difference between the cosine similarities of ``fidelity_pixels`` random pixels of the
        step in embedding space and in (normalised) input space, which keeps the embedding
        from drifting away from the spectra (:func:`~napari_dgc.training.losses.fidelity_loss`).
        0 turns it off.
    fidelity_pixels : int
        Pixels drawn per step for the fidelity term.
    layer_init : {"default", "data"}
        ``"default"``: PyTorch's initialisation of the convolutions. ``"data"``: before the
        first step, every convolution is rescaled so its output over the first batch has zero
        mean and unit variance per channel (:meth:`DGCModel.initialize_from_data`), so the
        initial embeddings spread over the sphere along the spectral differences.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 2000
    checkpoint_every: int = 100
    crop_size: int = 64
    batch_size: int = 4
    overlap_min: float = 0.2
    overlap_max: float = 0.8
    pairs_per_cube: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    weight_compact: float = 1.0
    weight_orth: float = 0.001
    weight_balance: float = 2.0
    weight_uniform: float = 2.0
    weight_consistency: float = 1.0
    ema_decay: float = 0.99
    dead_threshold: float = 0.01
    kick: float = 0.05
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    balance_sign: str = "paper"
    uniform_schedule: str = "cosine"
    uniform_final_fraction: float = 0.1
    balance_schedule: str = "cosine"
    balance_final_fraction: float = 0.0
    kick_schedule: str = "constant"
    kick_final_fraction: float = 0.1
    schedule_steps: int | None = 100
    max_spectral_shift: int = 2
    normalization_pixels: int = 50_000
    ema_second_pass: bool = False
    uniform_target: str = "usage"
    uniform_floor: float = 0.5
    usage_ema_decay: float = 0.9
    dead_policy: str = "reseed"
    centroid_init: str = "random"
    centroid_fit_step: int = 0
    centroid_fit_inits: int = 8
    restarts: int = 3
    restart_steps: int = 200
    selection_windows: int = 8
    layer_init: str = "data"
    weight_fidelity: float = 0.3
    fidelity_pixels: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~napari_dgc.errors.ConfigError` naming the first invalid setting."""
        self.model.validate()
        at_least_one = ("steps", "checkpoint_every", "batch_size", "pairs_per_cube", "restarts",
                        "restart_steps", "selection_windows")
        for name in at_least_one:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        minimum_crop = 2 * (self.model.meanshift_window // 2) + 1
        if self.crop_size < max(8, minimum_crop):
            raise ConfigError(f"crop_size must be at least 8 pixels, got {self.crop_size}")
        if not 0.0 < self.overlap_min <= self.overlap_max < 1.0:
            raise ConfigError(
                "overlap fractions need 0 < overlap_min <= overlap_max < 1, got "
                f"{self.overlap_min} .. {self.overlap_max}"
            )
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "grad_clip", "weight_compact", "weight_orth", "weight_balance",
                     "weight_uniform", "weight_consistency", "weight_fidelity", "kick", "dead_threshold",
                     "max_spectral_shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.dead_threshold >= 1.0 / self.model.n_clusters:
            raise ConfigError(
                f"dead_threshold {self.dead_threshold} must be below 1/K = "
                f"{1.0 / self.model.n_clusters:.3g} (a perfectly balanced cluster would be dead)"
            )
        if self.balance_sign not in ("paper", "reference"):
            raise ConfigError(f"balance_sign must be 'paper' or 'reference', got {self.balance_sign!r}")
        for name in ("uniform_schedule", "balance_schedule", "kick_schedule"):
            if getattr(self, name) not in SCHEDULES:
                raise ConfigError(f"{name} must be one of {', '.join(SCHEDULES)}")
        for name in ("uniform_final_fraction", "balance_final_fraction", "kick_final_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ConfigError(f"schedule_steps must be at least 1, got {self.schedule_steps}")
        choices = {"uniform_target": ("usage", "uniform"), "dead_policy": ("reseed", "kick"),
                   "centroid_init": ("random", "kmeans++"), "layer_init": ("default", "data")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.uniform_floor <= 1.0:
            raise ConfigError(f"uniform_floor must be in (0, 1], got {self.uniform_floor}")
        if not 0.0 <= self.usage_ema_decay < 1.0:
            raise ConfigError(f"usage_ema_decay must be in [0, 1), got {self.usage_ema_decay}")
        if self.centroid_fit_step < 0:
            raise ConfigError(f"centroid_fit_step must not be negative, got {self.centroid_fit_step}")
        if self.centroid_fit_inits < 1:
            raise ConfigError(f"centroid_fit_inits must be at least 1, got {self.centroid_fit_inits}")
        if self.fidelity_pixels < 2:
            raise ConfigError(f"fidelity_pixels must be at least 2, got {self.fidelity_pixels}")
        if self.normalization_pixels < 100:
            raise ConfigError("normalization_pixels must be at least 100")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict (the model settings nested)."""
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build settings from :meth:`to_dict` output; missing keys take their defaults."""
        reject_unknown_settings(cls, data, "training")
        values = dict(data)
        if "model" in values and not isinstance(values["model"], ModelConfig):
            values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


@dataclass(frozen=True)
class ProgressEvent:
    """One optimiser step done.

    ``losses`` holds the weighted terms ``compact``, ``orth``, ``balance``, ``uniform``,
    ``consistency`` and their sum ``total``; ``elapsed_s`` counts training time only (not the
    time the consumer paused), including earlier sessions of a resumed run and all starts.
    ``start`` is the start the step belongs to (``TrainConfig.restarts``): with several starts,
    steps ``1 .. restart_steps`` come once per start, then the selected start continues to
    ``total_steps``. ``run_step`` of ``run_total_steps`` counts the steps of all starts
    together (what a progress bar shows); both equal ``step`` / ``total_steps`` with one start.
    """

    step: int
    total_steps: int
    losses: dict[str, float]
    active_clusters: int
    learning_rate: float
    elapsed_s: float
    start: int = 0
    run_step: int | None = None
    run_total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.run_step is None:
            object.__setattr__(self, "run_step", self.step)
        if self.run_total_steps is None:
            object.__setattr__(self, "run_total_steps", self.total_steps)


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint was fully written and listed in ``run.json`` (``start`` and ``run_step`` as
    in :class:`ProgressEvent`)."""

    step: int
    checkpoint_id: str
    run_dir: Path
    start: int = 0
    run_step: int | None = None


@dataclass(frozen=True)
class StartSelectedEvent:
    """Every start has trained to the selection step; ``start`` continues (the highest of
    ``separations``, one per start) and is recorded in ``run.json``."""

    start: int
    separations: list[float]
    run_dir: Path


@dataclass(frozen=True)
class FinishedEvent:
    """Training reached ``total_steps``."""

    step: int
    run_dir: Path


def apply_overrides(settings: dict, overrides: Sequence[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides to a :meth:`TrainConfig.to_dict` dict and return it.

    ``model.KEY`` sets a model setting; values are parsed as JSON (``1e-4``, ``false``,
    ``null``, ``"cosine"``) and otherwise kept as strings (``cosine``). Unknown keys and invalid
    values are caught when the dict is turned back into a :class:`TrainConfig`.

    Raises
    ------
    ConfigError
        An override without ``=``.
    """
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"a setting must look like KEY=VALUE, got {override!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key.startswith("model."):
            settings["model"][key[len("model."):]] = value
        else:
            settings[key] = value
    return settings


def schedule_value(start: float, kind: str, final_fraction: float, step: int, total: int) -> float:
    """Value of a decaying schedule at ``step`` (0-based) of ``total`` steps."""
    if kind == "constant" or total <= 1:
        return start
    progress = min(max(step / (total - 1), 0.0), 1.0)
    if kind == "linear":
        factor = 1.0 - (1.0 - final_fraction) * progress
    elif kind == "cosine":
        factor = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ConfigError(f"unknown schedule {kind!r}")
    return start * factor


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an unavailable device raises ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but this PyTorch has no usable CUDA")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}") from error


@dataclass
class StepResult:
    """What one optimiser step reports (losses weighted, floats)."""

    losses: dict[str, float]
    active_clusters: int
    usage: np.ndarray  # hard-label share of each cluster in the step


class Trainer:
    """One model, its optimiser and the pair stream; :meth:`step` performs one training step.

    :func:`train` wraps it with run-folder bookkeeping; benchmarks and tuning scripts use it
    directly.
    """

    def __init__(self, model: DGCModel, stream: PairStream, config: TrainConfig,
                 device: torch.device, start: int = 0) -> None:
        self.model = model.to(device)
        self.stream = stream
        self.config = config
        self.device = device
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        # Start 0 keeps the generators of single-start runs; other starts get their own.
        start_key = [start] if start else []
        self.start = start
        self.kick_rng = np.random.default_rng([config.seed, 4, *start_key])
        self.fidelity_rng = np.random.default_rng([config.seed, 5, *start_key])
        self.step_count = 0
        n_clusters = model.n_clusters
        self.usage_ema = np.full(n_clusters, 1.0 / n_clusters)

    @property
    def _schedule_length(self) -> int:
        return self.config.schedule_steps or self.config.steps

    # -- state -----------------------------------------------------------------------------
    def training_state(self) -> dict:
        """JSON-serialisable state besides the model and optimiser (for checkpoints)."""
        return {
            "step": self.step_count,
            "sampler": self.stream.state_dict(),
            "kick_rng": self.kick_rng.bit_generator.state,
            "fidelity_rng": self.fidelity_rng.bit_generator.state,
            "usage_ema": self.usage_ema.tolist(),
            "start": self.start,
        }

    def load_training_state(self, state: dict) -> None:
        """Restore :meth:`training_state` output."""
        self.step_count = int(state["step"])
        self.stream.load_state_dict(state["sampler"])
        self.kick_rng.bit_generator.state = state["kick_rng"]
        self.start = int(state.get("start", 0))
        if "fidelity_rng" in state:  # absent in checkpoints written before the fidelity term
            self.fidelity_rng.bit_generator.state = state["fidelity_rng"]
        if "usage_ema" in state:  # absent in checkpoints written before the usage target
            self.usage_ema = np.asarray(state["usage_ema"], dtype=np.float64)

    # -- one step --------------------------------------------------------------------------
    def _crop_features(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spectral stage once per unique pixel of each pair, gathered into ``2B`` crops.

        Returns the features ``(2B, D, S, S)``, the spectral input of every unique pixel
        ``(P, L)`` and ``index`` ``(2B * S * S,)``: row ``i`` of the flattened crops is unique
        pixel ``index[i]``.
        """
        model = self.model
        size = self.config.crop_size
        sequence_blocks, index_blocks, offset = [], [], 0
        for pair in pairs:
            # Normalisation, band shift and resampling as one matrix product per pair.
            raw = torch.from_numpy(pair.pixels).to(self.device)
            sequence_blocks.append(model.spectral_input(raw, pair.spectral_shift))
            index_blocks += [pair.index_a + offset, pair.index_b + offset]
            offset += pair.pixels.shape[0]
        sequences = torch.cat(sequence_blocks)
        features = model.band_features(sequences)
        index = torch.from_numpy(np.stack(index_blocks)).to(self.device).reshape(-1)
        crops = features[index].reshape(2 * len(pairs), size, size, -1)
        return crops.permute(0, 3, 1, 2), sequences, index

    def _raw_crops(self, pairs: list[CropPair]) -> torch.Tensor:
        """The pairs' ``2B`` crops as raw spectra ``(2B, bands, S, S)`` (no spectral shift)."""
        crops = [pair.pixels[index] for pair in pairs for index in (pair.index_a, pair.index_b)]
        return torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2)

    def _forward(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Flat embeddings ``(N, D)``, log-probabilities ``(N, K)``, and ``(sequences, index)``
        from :meth:`_crop_features` (the spectral input of row ``i`` is ``sequences[index[i]]``)."""
        features, sequences, index = self._crop_features(pairs)
        z = self.model.spatial(features)
        logits = torch.einsum("bdhw,kd->bhwk", z, self.model.centroids) / self.model.config.temperature
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return z_flat, torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=1), (sequences, index)

    def _matched_rows(self, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor]:
        crop_pixels = self.config.crop_size**2
        rows_a = [pair.match_a + (2 * j) * crop_pixels for j, pair in enumerate(pairs)]
        rows_b = [pair.match_b + (2 * j + 1) * crop_pixels for j, pair in enumerate(pairs)]
        return (torch.from_numpy(np.concatenate(rows_a)).to(self.device),
                torch.from_numpy(np.concatenate(rows_b)).to(self.device))

    def step(self) -> StepResult:
        """Draw a batch of pairs, take one optimiser step and update the centroids."""
        config, model = self.config, self.model
        pairs = [self.stream.next_pair() for _ in range(config.batch_size)]
        model.train()
        if self.step_count == 0 and config.layer_init == "data":
            model.initialize_from_data(self._raw_crops(pairs))
        if self.step_count == 0 and config.centroid_init == "kmeans++":
            self._fit_centroids(pairs, inits=1)
        if config.centroid_fit_step and self.step_count == config.centroid_fit_step:
            self._fit_centroids(pairs, inits=config.centroid_fit_inits)
        z, log_p, spectral_rows = self._forward(pairs)
        p = log_p.exp()
        centroids = model.centroids
        rows_a, rows_b = self._matched_rows(pairs)
        uniform_weight = schedule_value(config.weight_uniform, config.uniform_schedule,
                                        config.uniform_final_fraction, self.step_count,
                                        self._schedule_length)
        balance_weight = schedule_value(config.weight_balance, config.balance_schedule,
                                        config.balance_final_fraction, self.step_count,
                                        self._schedule_length)
        terms = {
            "compact": config.weight_compact * losses.compactness_loss(z, p, centroids),
            "orth": config.weight_orth * losses.orthogonality_loss(centroids),
            "balance": balance_weight * losses.balance_loss(p, config.balance_sign),
            "uniform": uniform_weight * losses.uniform_assignment_loss(log_p, self._uniform_target()),
            "consistency": config.weight_consistency
            * losses.consistency_loss(log_p[rows_a], log_p[rows_b]),
            "fidelity": self._fidelity_term(z, *spectral_rows),
        }
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        self.optimizer.step()

        with torch.no_grad():
            if config.ema_second_pass:
                z, log_p, _ = self._forward(pairs)
                p = log_p.exp()
            z, p = z.detach(), p.detach()
            self._update_centroids(z, p)
            self.usage_ema = (config.usage_ema_decay * self.usage_ema
                              + (1 - config.usage_ema_decay) * p.mean(dim=0).double().cpu().numpy())
            usage = torch.bincount(p.argmax(dim=1), minlength=model.n_clusters).double() / p.shape[0]
        self.step_count += 1
        reported = {name: float(value.detach()) for name, value in terms.items()}
        reported["total"] = float(total.detach())
        usage_np = usage.cpu().numpy()
        return StepResult(reported, int((usage_np >= max(config.dead_threshold, 1e-9)).sum()), usage_np)

    def _fit_centroids(self, pairs: list[CropPair], inits: int, max_pixels: int = 4096) -> None:
        """Set the centroids to the best of ``inits`` spherical k-means fits (lowest ``1 - cos``
        inertia) of the pairs' embeddings, on at most ``max_pixels`` rows drawn with the kick
        generator (saved in checkpoints, so resuming stays exact)."""
        with torch.no_grad():
            z, _, _ = self._forward(pairs)
            if z.shape[0] > max_pixels:
                z = z[torch.from_numpy(self.kick_rng.choice(z.shape[0], max_pixels, replace=False)).to(z.device)]
            fits = [spherical_kmeans(z, self.model.n_clusters, self.kick_rng) for _ in range(inits)]
            inertia = [float((1.0 - (z @ c.T).max(dim=1).values).sum()) for c in fits]
            self.model.centroids.copy_(fits[int(np.argmin(inertia))])

    def _fidelity_term(self, z: torch.Tensor, sequences: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Weighted fidelity loss on ``fidelity_pixels`` rows of ``z`` drawn at random; row
        ``i``'s spectral input is ``sequences[index[i]]``."""
        weight = self.config.weight_fidelity
        if weight == 0:
            return z.new_zeros(())
        count = min(self.config.fidelity_pixels, z.shape[0])
        rows = torch.from_numpy(self.fidelity_rng.choice(z.shape[0], count, replace=False))
        rows = rows.to(z.device)
        return weight * losses.fidelity_loss(z[rows], sequences[index[rows]])

    def _uniform_target(self) -> torch.Tensor | None:
        """Cluster shares of the uniform-assignment pseudo-labels (``None``: exactly N/K)."""
        if self.config.uniform_target == "uniform":
            return None
        return losses.floored_usage_target(torch.from_numpy(self.usage_ema), self.config.uniform_floor)

    def _update_centroids(self, z: torch.Tensor, p: torch.Tensor) -> None:
        """EMA toward the probability-weighted mean embeddings; kick or re-seed clusters with
        too little mass."""
        config, centroids = self.config, self.model.centroids
        mass = p.sum(dim=0)
        means = F.normalize(p.T @ z, dim=1)
        has_mass = (mass > 0).unsqueeze(1)
        updated = torch.where(has_mass, config.ema_decay * centroids + (1 - config.ema_decay) * means,
                              centroids)
        dead = (mass / p.shape[0]) < config.dead_threshold
        if bool(dead.any()) and config.dead_policy == "reseed":
            updated = F.normalize(updated, dim=1)
            for cluster in torch.nonzero(dead).squeeze(1).tolist():
                live = ~dead
                updated[cluster] = _draw_far_embedding(z, updated[live], self.kick_rng)
                dead[cluster] = False
        elif bool(dead.any()):
            kick = schedule_value(config.kick, config.kick_schedule, config.kick_final_fraction,
                                  self.step_count, self._schedule_length)
            noise = torch.from_numpy(self.kick_rng.standard_normal(tuple(centroids.shape))).to(centroids)
            updated = torch.where(dead.unsqueeze(1), updated + kick * noise, updated)
        centroids.copy_(F.normalize(updated, dim=1))


def _draw_far_embedding(z: torch.Tensor, centroids: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One row of ``z`` drawn with probability proportional to ``(1 - cos)^2`` to its nearest
    row of ``centroids`` (uniformly when there are none or all distances are zero)."""
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


def spherical_kmeans(z: torch.Tensor, n_clusters: int, rng: np.random.Generator,
                     iterations: int = 10, max_pixels: int = 4096) -> torch.Tensor:
    """Unit-norm centroids ``(K, D)`` of the unit embeddings ``z`` ``(N, D)``: k-means++
    seeding with the distance ``1 - cos``, then Lloyd iterations on the sphere, on at most
    ``max_pixels`` rows drawn with ``rng``."""
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


def _describe_sources(cubes: Sequence) -> tuple[list[str], np.ndarray | None]:
    names, wavelengths = [], None
    for cube in cubes:
        if isinstance(cube, (str, Path)):
            names.append(str(cube))
        elif hasattr(cube, "path"):
            names.append(str(cube.path))
        if wavelengths is None and getattr(cube, "wavelengths", None) is not None:
            wavelengths = np.asarray(cube.wavelengths, dtype=np.float64)
    return names, wavelengths


def _window_stats(results: list[StepResult]) -> dict:
    """Checkpoint statistics: mean losses, active clusters and usage since the last checkpoint."""
    usage = np.mean([result.usage for result in results], axis=0)
    return {
        "losses": {term: float(np.mean([r.losses[term] for r in results])) for term in LOSS_TERMS},
        "active_clusters": results[-1].active_clusters,
        "mean_active_clusters": float(np.mean([r.active_clusters for r in results])),
        "usage": usage.tolist(),
        "usage_entropy": usage_entropy(usage),
        "steps_averaged": len(results),
    }


def train(
    cubes: Sequence,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
) -> Iterator[ProgressEvent | CheckpointEvent | StartSelectedEvent | FinishedEvent]:
    """Train a DGC model, yielding events; checkpoints go to ``run_dir``.

    Parameters
    ----------
    cubes : sequence of path, Cube or numpy.ndarray
        The dataset: cube files (opened with :func:`napari_dgc.io.open_cube`), opened cubes or
        band-last ``(rows, cols, bands)`` arrays, all with the same band count. Only the windows
        the crop pairs need are read, one cube at a time.
    config : TrainConfig
        Settings. When resuming, the run's own settings are used except ``steps``,
        ``checkpoint_every`` and ``device``, which come from ``config`` (so a finished run can be
        extended); the model settings must match the run's.
    run_dir : path-like
        New run folder, or the run to resume.
    resume : bool
        Continue the run in ``run_dir`` from its latest checkpoint.

    Yields
    ------
    ProgressEvent, CheckpointEvent, StartSelectedEvent or FinishedEvent

    Raises
    ------
    DGCError
        Bad input (cubes of different band counts, a cube smaller than the crop, NaN / Inf
        pixels, invalid settings, a run folder of another band count or model); raised before
        anything is written when detectable up front.
    """
    from napari_dgc.run_folder import RunDirectory

    config.validate()
    sources = open_sources(cubes)
    n_bands = sources[0].n_bands
    if resume:
        run = RunDirectory.open(run_dir)
        run.ensure_compatible(config, n_bands)
        created = run.config
        config = replace(created, steps=config.steps, checkpoint_every=config.checkpoint_every,
                         device=config.device)
    else:
        created = config
    check_crop_fits(sources, config.crop_size)
    # Where the selection happens is fixed when the run is created: extending ``steps`` on
    # resume must not move it.
    plan = StartPlan.for_run(created, config.steps)
    device = resolve_device(config.device)
    written = run.checkpoints() if resume else []
    if written:
        # The dataset statistics are in every checkpoint (fresh starts of a resumed run need
        # them); training time counts all starts, so it comes from the last one written.
        weights, _, state = run.load_checkpoint_state(written[-1].checkpoint_id)
        normalization = (weights["band_offset"], weights["band_scale"],
                         float(weights["brightness_floor"]))
        elapsed = float(state.get("elapsed_s", 0.0))
    else:
        statistics = compute_band_statistics(sources, config.model.brightness_norm,
                                             config.normalization_pixels)
        normalization = (statistics.offset, statistics.scale, statistics.brightness_floor)
        elapsed = 0.0
    if not resume:
        names, wavelengths = _describe_sources(cubes)
        run = RunDirectory.create(run_dir, config, n_bands, wavelengths, names, config.seed)
    run_path = Path(run.path)
    latest = run.latest_checkpoint()

    def trainer_for(start: int, checkpoint_id: str | None) -> Trainer:
        """Start ``start``'s trainer: fresh, or restored from one of its checkpoints."""
        trainer = _new_trainer(sources, config, device, start)
        if checkpoint_id is None:
            trainer.model.set_normalization(*normalization)
        else:
            model_state, optimizer_state, training_state = run.load_checkpoint_state(checkpoint_id)
            trainer.model.load_state_dict(model_state)
            trainer.optimizer.load_state_dict(optimizer_state)
            trainer.load_training_state(training_state)
        return trainer

    def train_to(trainer: Trainer, until: int, windows: list[np.ndarray] | None = None,
                 ) -> Iterator[ProgressEvent | CheckpointEvent]:
        """Step ``trainer`` to ``until``, writing its checkpoints; with selection ``windows``,
        also one at ``until`` with the start's score. Yields the events."""
        nonlocal elapsed
        offset = plan.run_step_offset(trainer.start, selecting=windows is not None)
        steps = _train_steps(trainer, until, elapsed, plan.total_run_steps, offset,
                             checkpoint_at=until if windows is not None else None)
        for event, checkpoint in steps:
            elapsed = event.elapsed_s
            info = None
            if checkpoint is not None:
                if windows is not None and checkpoint[0] == until:
                    checkpoint[4]["separation"] = spectral_separation(trainer.model, windows)
                info = run.save_checkpoint(*checkpoint, start=trainer.start,
                                           run_step=offset + checkpoint[0])
            yield event
            if info is not None:
                yield CheckpointEvent(info.step, info.checkpoint_id, run_path, info.start,
                                      info.run_step)

    if plan.restarts > 1 and run.selected_start is None:
        # Each start trains to the selection step in turn, its checkpoints written as it goes
        # (a person sees each start ignite or not); then the best-separated one continues.
        windows = selection_windows(sources, config.selection_windows,
                                    config.crop_size + 2 * config.model.receptive_radius,
                                    config.seed)
        first = 0 if latest is None else latest.start + int(latest.step >= plan.selection_step)
        for start in range(first, plan.restarts):
            resumed = latest is not None and latest.start == start
            trainer = trainer_for(start, latest.checkpoint_id if resumed else None)
            yield from train_to(trainer, plan.selection_step, windows)
        separations = [_start_separation(run, start, plan.selection_step)
                       for start in range(plan.restarts)]
        # Starts that reached the same partition score the same up to rounding: the first wins.
        best = max(separations)
        winner = next(start for start, value in enumerate(separations)
                      if np.isclose(value, best, rtol=1e-9, atol=0.0))
        run.record_selection(winner, separations)
        yield StartSelectedEvent(winner, separations, run_path)
        latest = run.latest_checkpoint()
    if latest is None:
        trainer = trainer_for(0, None)
    else:
        trainer = trainer_for(latest.start, latest.checkpoint_id)
    yield from train_to(trainer, config.steps)
    yield FinishedEvent(trainer.step_count, run_path)


@dataclass(frozen=True)
class StartPlan:
    """Where the steps of a run's starts lie on its timeline (``TrainConfig.restarts``).

    Starts ``0 .. restarts - 1`` each train ``selection_step`` steps in turn, then the selected
    one continues to ``steps``.
    """

    restarts: int
    selection_step: int
    steps: int

    @classmethod
    def for_run(cls, created: TrainConfig, steps: int | None = None) -> "StartPlan":
        """The plan of a run created with ``created``, trained to ``steps`` (default
        ``created.steps``; a resumed run may be extended, its selection step stays)."""
        return cls(created.restarts, min(created.restart_steps, created.steps),
                   created.steps if steps is None else steps)

    @property
    def total_run_steps(self) -> int:
        """Steps of all starts together."""
        return self.steps + (self.restarts - 1) * self.selection_step

    def run_step_offset(self, start: int, selecting: bool) -> int:
        """Run steps before step 1 of ``start``: the earlier starts' steps while it trains to
        the selection (``selecting``), all but the winner's after it."""
        return (start if selecting else self.restarts - 1) * self.selection_step


def _start_separation(run, start: int, selection_step: int) -> float:
    """The score start ``start`` recorded in its checkpoint at the selection step."""
    for info in run.checkpoints(start):
        if info.step == selection_step and "separation" in info.stats:
            return float(info.stats["separation"])
    raise CheckpointError(f"{run.manifest_path}: start {start} has no selection score")


def _new_trainer(sources: list, config: TrainConfig, device: torch.device, start: int) -> Trainer:
    """A fresh model and trainer for start ``start`` (0: the run's seed; others: initial weights
    and centroids from a seed derived from it, the same crop pairs)."""
    if start == 0:
        torch.manual_seed(config.seed)
    else:
        torch.manual_seed(int(np.random.SeedSequence([config.seed, start]).generate_state(1)[0]))
    model = DGCModel(sources[0].n_bands, config.model)
    stream = PairStream(sources, config.crop_size, (config.overlap_min, config.overlap_max),
                        config.pairs_per_cube, config.seed, config.augment, config.max_spectral_shift)
    return Trainer(model, stream, config, device, start)


def _train_steps(trainer: Trainer, until: int, elapsed: float, run_total_steps: int,
                 run_step_offset: int, checkpoint_at: int | None = None,
                 ) -> Iterator[tuple[ProgressEvent, tuple | None]]:
    """Step ``trainer`` up to step ``until``, yielding ``(event, checkpoint)`` per step.

    ``checkpoint`` is ``None`` or, every ``checkpoint_every`` steps, at the last step and at
    ``checkpoint_at``, the arguments of ``RunDirectory.save_checkpoint`` (the live tensors:
    write them before the next step).
    """
    config, model = trainer.config, trainer.model
    window: list[StepResult] = []
    while trainer.step_count < until:
        started = time.perf_counter()
        result = trainer.step()
        elapsed += time.perf_counter() - started
        window.append(result)
        step = trainer.step_count
        checkpoint = None
        if step % config.checkpoint_every == 0 or step in (config.steps, checkpoint_at):
            state = trainer.training_state()
            state["elapsed_s"] = elapsed
            stats = _window_stats(window)
            stats["bandwidth"] = float(model.bandwidth.detach())
            checkpoint = (step, model.state_dict(), trainer.optimizer.state_dict(), state, stats)
            window = []
        event = ProgressEvent(step, config.steps, result.losses, result.active_clusters,
                              float(trainer.optimizer.param_groups[0]["lr"]), elapsed,
                              trainer.start, run_step_offset + step, run_total_steps)
        yield event, checkpoint


def selection_windows(sources: Sequence, count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` windows ``(h, w, bands)`` of at most ``size`` x ``size`` pixels at random
    positions of random cubes (seeded), on which :func:`spectral_separation` scores a model."""
    rng = np.random.default_rng([seed, 6])
    windows = []
    for _ in range(count):
        source = sources[int(rng.integers(len(sources)))]
        height, width = (min(size, extent) for extent in source.shape_hw)
        row = int(rng.integers(source.shape_hw[0] - height + 1))
        col = int(rng.integers(source.shape_hw[1] - width + 1))
        windows.append(source.read_window(slice(row, row + height), slice(col, col + width)))
    return windows


def spectral_separation(model: DGCModel, windows: Sequence[np.ndarray]) -> float:
    """Calinski–Harabasz index of the model's hard labels of the windows' pixels on their
    normalised spectral inputs (what the spectral stage reads): how well the clusters separate
    the spectra, the k-means criterion on the inputs. Higher is better."""
    device = model.centroids.device
    features, labels = [], []
    model.eval()
    with torch.no_grad():
        for window in windows:
            pixels = torch.from_numpy(np.ascontiguousarray(window)).to(device)
            labels.append(model.predict(pixels.permute(2, 0, 1)[None]).reshape(-1).cpu().numpy())
            features.append(model.spectral_input(pixels.reshape(-1, pixels.shape[-1])).cpu().numpy())
    return calinski_harabasz(np.concatenate(features), np.concatenate(labels))
