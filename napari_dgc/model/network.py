"""The DGC model: per-pixel spectral encoder, spatial convolutions, unrolled mean-shift, centroids.

Pipeline of :meth:`DGCModel.embed` for a raw cube tensor ``(B, bands, H, W)``:

1. :meth:`~DGCModel.normalize` — dataset-level normalisation held in buffers (optionally a
   per-pixel brightness division first, then a per-band offset / scale);
2. :meth:`~DGCModel.spectral` — every pixel's spectrum on its own, as a ``(pixels, 1, bands)``
   sequence: an optional fixed box-filter resampling of the band axis to ``spectral_bands``
   bins, three 1D convolutions (kernel 9) *along the band axis* with ReLU, mean over the band
   positions -> ``embed_dim`` features. No pixel is mixed with another here;
3. :meth:`~DGCModel.spatial` — two 2D ``3x3`` convolutions, L2 normalisation, then
   ``meanshift_iters`` Gaussian mean-shift iterations over ``meanshift_window`` neighbourhoods
   with a learned (softplus) bandwidth.

:meth:`~DGCModel.assign` gives ``softmax(cos(z, c_k) / temperature)`` over the ``K`` unit-norm
centroids; the hard label is the nearest centroid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_dgc.config import ModelConfig
from napari_dgc.errors import ConfigError
from napari_dgc.model.band_convolution import (
    BANDED_MATRIX_MAX_LENGTH,
    BandedStack,
    band_convolution,
    banded_matrix,
    box_resampling_matrix,
    position_blocked_features,
    position_blocks,
)
from napari_dgc.model.meanshift import mean_shift, uses_compiled_kernel

#: Smallest per-channel spread that the data-dependent initialisation divides by.
MIN_INIT_SPREAD = 1e-6

#: Scale of the default random weights left on top of the identity (Dirac) kernel when
#: ``spatial_init="identity"``.
IDENTITY_INIT_NOISE = 0.1


#: Pixels whose spectral convolutions run at once when no gradient is needed: the hidden
#: activations of 1024 pixels (16 channels x 16 positions, float32) take 1 MiB and stay in the
#: core's cache. Measured on a 280 x 280 tile: 1.6 us/pixel vs 3.1 for all pixels at once.
SPECTRAL_CHUNK_PIXELS = 1024

#: The same when gradients are recorded (training): the activations autograd keeps for 4096
#: pixels (~8 MiB) stay in the L3 cache for the ReLU and matrix-product backward passes.
#: Measured on a training step's 24 576 pixels, spectral forward + backward, one thread:
#: 262 ms CPU in one piece, 204 ms in chunks of 1024, 180 ms in chunks of 4096.
SPECTRAL_GRAD_CHUNK_PIXELS = 4096

#: Blocks the output positions of a band convolution are split into when no gradient is
#: needed. Each block's matrix product reads only the input positions its kernels reach, which
#: skips most of the banded matrix's structural zeros: 36 k instead of 57 k multiply-adds per
#: pixel for the default model (see docs/benchmarks.md, "Segmentation").
INFERENCE_POSITION_BLOCKS = 4


def _standardize_output(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Rescale ``conv`` so that ``conv(x)`` has zero mean and unit variance per output channel
    over ``dims``; return the new output.
    """
    out = conv(x)
    mean = out.mean(dim=dims)
    std = out.std(dim=dims)
    # A channel constant over the batch (e.g. a flat test crop) keeps its scale: dividing by a
    # vanishing spread would blow its weights up for the data that does vary.
    std = torch.where(std > MIN_INIT_SPREAD, std, torch.ones_like(std))
    conv.weight.div_(std.reshape(-1, *[1] * (conv.weight.ndim - 1)))
    conv.bias.sub_(mean).div_(std)
    shape = [1] * out.ndim
    shape[1] = -1
    return (out - mean.reshape(shape)) / std.reshape(shape)


class DGCModel(nn.Module):
    """Deep Global Clustering network for cubes of ``n_bands`` bands.

    Parameters
    ----------
    n_bands : int
        Number of spectral bands of every cube the model sees.
    config : ModelConfig, optional
        Architecture; paper defaults when omitted.
    """

    def __init__(self, n_bands: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = ModelConfig() if config is None else config
        config.validate()
        if n_bands < 1:
            raise ConfigError(f"a model needs at least one band, got {n_bands}")
        self.n_bands = int(n_bands)
        self.config = config

        # Dataset-level normalisation, filled by training (napari_dgc.training.normalization).
        self.register_buffer("band_offset", torch.zeros(n_bands))
        self.register_buffer("band_scale", torch.ones(n_bands))
        self.register_buffer("brightness_floor", torch.tensor(1e-6))

        resample = config.spectral_bands is not None and config.spectral_bands < n_bands
        self.spectral_length = config.spectral_bands if resample else n_bands
        self.register_buffer(
            "resampling",
            box_resampling_matrix(n_bands, config.spectral_bands) if resample else None,
            persistent=False,
        )
        layers: list[nn.Module] = []
        channels_in = 1
        for index in range(config.spectral_layers):
            last = index == config.spectral_layers - 1
            channels_out = config.embed_dim if last else config.spectral_channels
            layers += [
                nn.Conv1d(
                    channels_in,
                    channels_out,
                    config.spectral_kernel,
                    stride=config.spectral_stride,
                    padding=config.spectral_kernel // 2,
                ),
                nn.ReLU(inplace=True),
            ]
            channels_in = channels_out
        self.spectral_convs = nn.Sequential(*layers)

        self.spatial_convs = nn.ModuleList(
            nn.Conv2d(
                config.embed_dim, config.embed_dim, config.spatial_kernel, padding=config.spatial_kernel // 2
            )
            for _ in range(config.spatial_layers)
        )
        if config.spatial_init == "identity":
            for conv in self.spatial_convs:
                with torch.no_grad():
                    conv.weight.mul_(IDENTITY_INIT_NOISE)
                    conv.weight.add_(nn.init.dirac_(torch.empty_like(conv.weight)))
                    conv.bias.zero_()
        self.bandwidth_raw = nn.Parameter(
            torch.tensor(math.log(math.expm1(config.bandwidth_init)))  # softplus^-1
        )
        centroids = torch.randn(config.n_clusters, config.embed_dim)
        if not centroids.is_meta:  # a shape-only model (weight checks) has nothing to normalise,
            centroids = F.normalize(centroids, dim=1)  # and meta norms import torch._dynamo (0.8 s)
        self.register_buffer("centroids", centroids)

    # -- properties ----------------------------------------------------------------------
    @property
    def n_clusters(self) -> int:
        """Number of centroids ``K``."""
        return self.config.n_clusters

    @property
    def bandwidth(self) -> torch.Tensor:
        """Mean-shift bandwidth ``h = softplus(raw)``."""
        return F.softplus(self.bandwidth_raw)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each output pixel depends on (halo a tile needs to be exact)."""
        return self.config.receptive_radius

    # -- normalisation -------------------------------------------------------------------
    def set_normalization(self, offset, scale, brightness_floor: float | None = None) -> None:
        """Store dataset-level normalisation statistics (per band) in the model's buffers."""
        offset = torch.as_tensor(offset, dtype=torch.float32).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if offset.numel() != self.n_bands or scale.numel() != self.n_bands:
            raise ConfigError(
                f"normalisation statistics have {offset.numel()} bands, the model {self.n_bands}"
            )
        with torch.no_grad():
            self.band_offset.copy_(offset)
            self.band_scale.copy_(scale)
            if brightness_floor is not None:
                self.brightness_floor.fill_(float(brightness_floor))

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise raw spectra ``(..., bands)`` with the dataset-level statistics."""
        if self.config.brightness_norm:
            brightness = pixels.mean(dim=-1, keepdim=True).abs().clamp_min(self.brightness_floor)
            pixels = pixels / brightness
        return (pixels - self.band_offset) / self.band_scale

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a raw tensor ``(B, bands, H, W)``; returns the same shape."""
        self._check_bands(x)
        return self.normalize_pixels(x.movedim(1, -1)).movedim(-1, 1)

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation of every convolution from a raw batch ``(B, bands, H, W)``.

        Layer by layer, each convolution's weights and bias are rescaled so that its output over
        ``x`` has zero mean and unit variance per channel (as in weight normalisation's
        data-dependent init, Salimans & Kingma 2016). PyTorch's default initialisation shrinks
        the signal at every layer and the ReLUs add a common positive offset, so without this
        the embeddings of all pixels point almost the same way (pixel-to-pixel spread ~5 % of
        the norm) and the first optimiser steps decide the clusters instead of the spectra.
        """
        self._check_bands(x)
        batch, _, height, width = x.shape
        features = self.spectral_input(x.permute(0, 2, 3, 1).reshape(-1, self.n_bands)).unsqueeze(1)
        for module in self.spectral_convs:
            features = (
                _standardize_output(module, features, dims=(0, 2))
                if isinstance(module, nn.Conv1d)
                else module(features)
            )
        features = features.mean(dim=-1).reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        last = len(self.spatial_convs) - 1
        for index, conv in enumerate(self.spatial_convs):
            features = _standardize_output(conv, features, dims=(0, 2, 3))
            if index < last:
                features = F.relu(features)

    # -- stages --------------------------------------------------------------------------
    def spectral(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-pixel spectral stage: normalised spectra ``(P, bands)`` -> features ``(P, D)``.

        Every spectrum is a separate 1-channel sequence along the band axis, so no pixel is
        mixed with another.
        """
        if self.resampling is not None:
            pixels = pixels @ self.resampling
        return self.band_features(pixels)

    def spectral_input(self, raw_pixels: torch.Tensor, band_shift: int = 0) -> torch.Tensor:
        """Raw spectra ``(P, bands)`` -> normalised, resampled sequences ``(P, spectral_length)``.

        Same as ``normalize_pixels``, then moving every band by ``band_shift`` positions
        (``out[:, j] = in[:, clamp(j + band_shift)]``, the training augmentation), then the band
        resampling, but as one matrix product with the normalisation and the shift folded into
        the matrix: ``((p / b - o) / s) G R = (p (G R / s)) / b - (o / s) G R``, with the
        brightness ``b`` (the band mean) as an extra column. This reads each 301-band spectrum
        once instead of four times. Without gradients on the CPU a compiled kernel multiplies
        only each bin's window of bands (:func:`napari_dgc.model.cpu_kernels.spectral_input_cpu`).
        """
        band_index = None
        if band_shift:
            band_index = (torch.arange(self.n_bands, device=raw_pixels.device) + band_shift).clamp(
                0, self.n_bands - 1
            )
        if self.resampling is None:
            normalized = self.normalize_pixels(raw_pixels)
            return normalized if band_index is None else normalized[:, band_index]
        resampling = self.resampling
        if band_index is not None:  # row i of G R sums the rows of R whose band reads band i
            resampling = torch.zeros_like(resampling).index_add_(0, band_index, resampling)
        inverse_scale = 1.0 / self.band_scale
        matrix = resampling * inverse_scale[:, None]
        offset = (self.band_offset * inverse_scale) @ resampling
        if uses_compiled_kernel(raw_pixels, torch.is_grad_enabled()):
            from napari_dgc.model.cpu_kernels import bin_windows, spectral_input_cpu

            windows = bin_windows(matrix.numpy())
            if windows is not None:
                return torch.from_numpy(
                    spectral_input_cpu(
                        raw_pixels.contiguous().numpy(),
                        windows,
                        offset.numpy(),
                        float(self.brightness_floor),
                        self.config.brightness_norm,
                    )
                )
        if not self.config.brightness_norm:
            return torch.addmm(-offset, raw_pixels, matrix)
        band_mean = torch.full_like(matrix[:, :1], 1.0 / self.n_bands)
        products = raw_pixels @ torch.cat([matrix, band_mean], dim=1)
        brightness = products[:, -1:].abs().clamp_min(self.brightness_floor)
        return products[:, :-1] / brightness - offset

    def band_features(self, sequences: torch.Tensor) -> torch.Tensor:
        """1D convolutions along the band axis and mean: ``(P, length)`` -> ``(P, D)``.

        The pixels go through in chunks (each pixel is independent, so the result is the same)
        of :data:`SPECTRAL_CHUNK_PIXELS`, or :data:`SPECTRAL_GRAD_CHUNK_PIXELS` when gradients
        are recorded. Short sequences (every convolution a :func:`banded_matrix` product) with
        gradients go through :class:`~napari_dgc.model.band_convolution.BandedStack`: a hand-written
        backward pass, and the
        chunks on worker threads forward and backward when torch may use several threads.
        Without gradients they go through :func:`position_blocks` products, which skip most of
        the banded matrices' zeros (same result up to float rounding).
        """
        needs_grad = torch.is_grad_enabled() and (
            sequences.requires_grad or any(p.requires_grad for p in self.spectral_convs.parameters())
        )
        chunk = max(1, SPECTRAL_GRAD_CHUNK_PIXELS if needs_grad else SPECTRAL_CHUNK_PIXELS)
        convs = [module for module in self.spectral_convs if isinstance(module, nn.Conv1d)]
        lengths = [sequences.shape[-1]]  # input positions of each convolution, then the output's
        for conv in convs:
            (kernel,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
            lengths.append((lengths[-1] + 2 * padding - kernel) // stride + 1)
        if max(lengths[:-1]) <= BANDED_MATRIX_MAX_LENGTH:
            if needs_grad:
                layers = [
                    tensor for conv, length in zip(convs, lengths) for tensor in banded_matrix(conv, length)
                ]
                return BandedStack.apply(sequences, lengths[-1], chunk, *layers)
            blocks = [
                position_blocks(conv, length, INFERENCE_POSITION_BLOCKS)
                for conv, length in zip(convs, lengths)
            ]
            return position_blocked_features(sequences, blocks, lengths[-1], chunk)
        # Banded matrices built once for all chunks (None: the sequence is long, use conv1d).
        banded = {
            conv: banded_matrix(conv, length)
            for conv, length in zip(convs, lengths)
            if length <= BANDED_MATRIX_MAX_LENGTH
        }
        outputs = []
        for start in range(0, sequences.shape[0], chunk):
            features = sequences[start : start + chunk].unsqueeze(1)
            for module in self.spectral_convs:
                if isinstance(module, nn.Conv1d):
                    features = band_convolution(features, module, banded.get(module))
                else:
                    features = module(features)
            outputs.append(features.mean(dim=-1))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def spatial(self, features: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Spatial stage: features ``(B, D, H, W)`` -> unit-norm embeddings after mean-shift.

        Parameters
        ----------
        features : torch.Tensor
            Output of :meth:`spectral` arranged as an image.
        valid_mask : torch.Tensor, optional
            ``(B, H, W)`` or ``(B, 1, H, W)`` bool: pixels inside the image. Pixels outside are
            treated exactly like the zero padding at the border of a whole image (convolutions)
            and are never a mean-shift neighbour, so a tile with a halo of
            :attr:`receptive_radius` reproduces the whole-image result.
        """
        mask = None
        if valid_mask is not None:
            mask = valid_mask.reshape(features.shape[0], 1, *features.shape[2:]).bool()
        last = len(self.spatial_convs) - 1
        for index, conv in enumerate(self.spatial_convs):
            if mask is not None:
                features = torch.where(mask, features, 0.0)
            features = conv(features)
            if index < last:
                features = F.relu(features)
        radius = self.config.meanshift_window // 2
        return mean_shift(features, self.bandwidth, self.config.meanshift_iters, radius, mask, normalize=True)

    def embed(self, x: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw cube tensor ``(B, bands, H, W)`` -> unit-norm embeddings ``(B, D, H, W)``."""
        self._check_bands(x)
        batch, _, height, width = x.shape
        sequences = self.spectral_input(x.permute(0, 2, 3, 1).reshape(-1, self.n_bands))
        if valid_mask is not None:
            # Values outside the image are ignored; keep NaN padding from reaching the convs.
            # (Zeroing the resampled sequence equals zeroing the normalised spectrum.)
            flat_mask = valid_mask.reshape(-1, 1).bool()
            sequences = torch.where(flat_mask, sequences, 0.0)
        return self.embed_sequences(sequences, batch, height, width, valid_mask)

    def embed_sequences(
        self,
        sequences: torch.Tensor,
        batch: int,
        height: int,
        width: int,
        valid_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`embed` from the spectral input ``(batch * height * width, L)`` (the output of
        :meth:`spectral_input`, pixels row-major per image) -> ``(B, D, H, W)``.
        """
        features = self.band_features(sequences)
        features = features.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return self.spatial(features, valid_mask)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``(B, D, H, W)`` -> probabilities ``(B, K, H, W)``.

        Without gradients the result does not depend on the threads that compute it (a
        segmentation must not depend on how its tiles were scheduled): the cosines are plain
        per-centroid dot products (a BLAS product may round the last bit differently with the
        thread count and the operands' alignment) and the softmax runs over a contiguous last
        axis (over axis 1, PyTorch splits the pixels between vectorised and scalar ``exp``
        depending on the threads).
        """
        if torch.is_grad_enabled():
            cosine = torch.einsum("bdhw,kd->bkhw", z, self.centroids)
            return torch.softmax(cosine / self.config.temperature, dim=1)
        cosine = torch.stack(
            [torch.linalg.vecdot(z, centroid[:, None, None], dim=1) for centroid in self.centroids], dim=-1
        )
        return torch.softmax(cosine / self.config.temperature, dim=-1).permute(0, 3, 1, 2)

    def log_assign(self, z: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the soft assignment ``(B, D, H, W)`` -> ``(B * H * W, K)``, pixels
        in row-major order: what the training losses take (differentiable).
        """
        logits = torch.einsum("bdhw,kd->bhwk", z, self.centroids) / self.config.temperature
        return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embeddings, probabilities)`` for a raw tensor ``(B, bands, H, W)``."""
        z = self.embed(x)
        return z, self.assign(z)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hard labels ``(B, H, W)`` int64: index of the nearest centroid of each pixel."""
        z = self.embed(x, valid_mask)
        return torch.einsum("bdhw,kd->bkhw", z, self.centroids).argmax(dim=1)

    def _check_bands(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.n_bands:
            raise ConfigError(f"expected a (batch, {self.n_bands}, rows, cols) tensor, got {tuple(x.shape)}")
