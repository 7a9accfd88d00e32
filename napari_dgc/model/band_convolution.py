"""The spectral stage's band convolutions as matrix products, and their fast paths.

A 1D convolution along the bands of short spectra is one product with its banded (Toeplitz)
matrix (:func:`banded_matrix`); with gradients, :class:`BandedStack` runs the whole stack with
a hand-written backward pass; without, :func:`position_blocks` products skip most of the
matrix's structural zeros. :meth:`DGCModel.band_features <napari_dgc.model.network.DGCModel.band_features>`
chooses between them. Each path equals ``conv1d`` up to float rounding (tests/test_model.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from napari_dgc.model.meanshift import WORKER_POOL


def box_resampling_matrix(n_bands: int, n_bins: int) -> torch.Tensor:
    """Return the ``(n_bands, n_bins)`` matrix that averages bands into equal-width bins.

    Each bin covers ``n_bands / n_bins`` bands; a band straddling two bins contributes to both in
    proportion to its overlap. Columns sum to one (a bin is a weighted mean of bands).
    """
    width = n_bands / n_bins
    band_lo = torch.arange(n_bands, dtype=torch.float64)
    bin_lo = torch.arange(n_bins, dtype=torch.float64) * width
    overlap = (
        torch.minimum(band_lo[:, None] + 1, bin_lo[None, :] + width)
        - torch.maximum(band_lo[:, None], bin_lo[None, :])
    ).clamp_min(0)
    return (overlap / width).float()


#: Sequences up to this length are convolved by one matrix product with the convolution's
#: banded (Toeplitz) matrix; longer ones by ``conv1d``. For the short spectra of the default
#: model the matrix product is ~2x faster than oneDNN's convolution (whose backward pass is
#: slow for so few channels), for long ones the mostly-zero matrix would cost more.
BANDED_MATRIX_MAX_LENGTH = 64


def banded_matrix(conv: nn.Conv1d, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``conv`` on sequences of ``length`` as a matrix product ``x @ matrix + bias``.

    ``matrix`` is the convolution's banded (Toeplitz) matrix ``(C_in * L, C_out * L_out)``
    built from the (differentiable) kernel; ``bias`` is the bias per output position
    ``(C_out * L_out,)``, or None without a bias.
    """
    (kernel,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
    length_out = (length + 2 * padding - kernel) // stride + 1
    device = conv.weight.device
    position = torch.arange(length, device=device)
    tap = position[:, None] - (torch.arange(length_out, device=device) * stride - padding)[None, :]
    inside = (tap >= 0) & (tap < kernel)
    # weight[o, i, tap[l, j]] where the tap is inside the kernel: (C_out, C_in, L, L_out)
    banded = conv.weight[:, :, tap.clamp(0, kernel - 1)] * inside.to(conv.weight.dtype)
    matrix = banded.permute(1, 2, 0, 3).reshape(conv.in_channels * length, -1)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(length_out)
    return matrix, bias


#: A block of :func:`position_blocks`: input columns, output columns, matrix, bias (or None).
PositionBlock = tuple[slice, slice, torch.Tensor, "torch.Tensor | None"]


def position_blocks(conv: nn.Conv1d, length: int, n_blocks: int) -> list[PositionBlock]:
    """Split ``conv`` on sequences of ``length`` into per-position-block matrix products.

    Activations are laid out *position-major*, ``(P, positions * channels)``, so the input
    positions one block of output positions reads (its kernels' reach) are one contiguous
    range of columns. ``out[:, cols] = x[:, rows] @ matrix (+ bias)`` for every block gives
    ``conv`` in that layout.

    Parameters
    ----------
    conv : nn.Conv1d
        The band convolution.
    length : int
        Positions of its input sequences.
    n_blocks : int
        Blocks of output positions (fewer if there are fewer positions).

    Returns
    -------
    list of (rows, cols, matrix, bias)
        Column ranges of the position-major input and output, the block's
        ``(len(rows), len(cols))`` matrix and its bias per output column (None without a bias).
    """
    matrix, bias = banded_matrix(conv, length)
    channels_in, channels_out = conv.in_channels, conv.out_channels
    length_out = matrix.shape[1] // channels_out
    # (C_in, L) x (C_out, L_out) channel-major -> (L, C_in) x (L_out, C_out) position-major
    matrix = (
        matrix.reshape(channels_in, length, channels_out, length_out)
        .permute(1, 0, 3, 2)
        .reshape(length * channels_in, length_out * channels_out)
    )
    if bias is not None:
        bias = bias.reshape(channels_out, length_out).T.reshape(-1)
    (kernel,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
    per_block = -(-length_out // max(1, n_blocks))
    blocks = []
    for first in range(0, length_out, per_block):
        last = min(length_out, first + per_block) - 1
        reach = (max(0, first * stride - padding), min(length, last * stride - padding + kernel))
        rows = slice(reach[0] * channels_in, reach[1] * channels_in)
        cols = slice(first * channels_out, (last + 1) * channels_out)
        blocks.append(
            (rows, cols, matrix[rows, cols].contiguous(), None if bias is None else bias[cols].contiguous())
        )
    return blocks


def band_convolution(
    x: torch.Tensor,
    conv: nn.Conv1d,
    banded: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Apply ``conv`` to ``(P, C_in, L)`` sequences; same result as ``conv(x)``.

    Short sequences use the convolution's :func:`banded_matrix` (pass it as ``banded`` to
    reuse it across calls), so forward and backward passes are plain matrix products.
    """
    n_seq, channels_in, length = x.shape
    if length > BANDED_MATRIX_MAX_LENGTH:
        return conv(x)
    matrix, bias = banded_matrix(conv, length) if banded is None else banded
    flat = x.reshape(n_seq, channels_in * length)
    out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return out.reshape(n_seq, conv.out_channels, -1)


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad`` where the ReLU's ``output`` is positive, else 0 (one pass; autograd's own op)."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


class BandedStack(torch.autograd.Function):
    """``mean(relu(... relu(x @ M_1 + b_1) ...) @ M_n + b_n)`` over the last layer's positions.

    The spectral stage of :meth:`DGCModel.band_features` (convolutions as banded-matrix
    products, each followed by ReLU, then the mean over band positions) for ``(P, L)``
    sequences, with a hand-written backward pass. The pixels are independent, so chunks of
    ``chunk`` pixels run on :data:`~napari_dgc.model.meanshift.WORKER_POOL`'s threads, forward and
    backward: their matrix products keep a core each busy, whereas splitting each product of a
    few thousand rows across threads scales poorly. Each chunk keeps its ReLU outputs (what
    the matrix and ReLU gradients need); the gradients of the matrices and biases are summed
    over the chunks in chunk order, so the result does not depend on the thread count. The
    matrices' gradients reach the convolution kernels through :func:`banded_matrix`.

    Arguments: ``sequences``, ``length_out`` (positions of the last layer), ``chunk``, then
    ``M_1, b_1, ..., M_n, b_n`` (a bias may be None).
    """

    @staticmethod
    def forward(ctx, sequences, length_out: int, chunk: int, *layers):  # noqa: D102
        pairs = list(zip(layers[0::2], layers[1::2]))
        chunks = [slice(start, start + chunk) for start in range(0, sequences.shape[0], chunk)]

        def run(rows: slice) -> tuple[torch.Tensor, list[torch.Tensor]]:
            with torch.no_grad():  # grad mode is per thread
                activation, kept = sequences[rows], [sequences[rows]]
                for matrix, bias in pairs:
                    product = activation @ matrix if bias is None else torch.addmm(bias, activation, matrix)
                    activation = product.relu_()
                    kept.append(activation)
                features = activation.reshape(activation.shape[0], -1, length_out).mean(dim=-1)
                return features, kept

        results = WORKER_POOL.map(run, chunks)
        ctx.chunks, ctx.kept, ctx.pairs, ctx.length_out = (
            chunks,
            [kept for _, kept in results],
            pairs,
            length_out,
        )
        ctx.input_needs_grad = ctx.needs_input_grad[0]
        return torch.cat([features for features, _ in results])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_features):  # noqa: D102 - gradient of the forward above
        pairs, length_out = ctx.pairs, ctx.length_out

        def run(index: int) -> tuple[torch.Tensor | None, list]:
            with torch.no_grad():
                kept = ctx.kept[index]
                # Mean over positions, then the last ReLU: grad / L where the output is positive.
                upstream = (grad_features[ctx.chunks[index]] / length_out).unsqueeze(-1)
                last = kept[-1].reshape(kept[-1].shape[0], -1, length_out)
                grad = _relu_backward(upstream.expand(last.shape), last).reshape(kept[-1].shape)
                grads = []
                for layer in range(len(pairs) - 1, -1, -1):
                    matrix, bias = pairs[layer]
                    grads.append((kept[layer].T @ grad, None if bias is None else grad.sum(dim=0)))
                    if layer > 0:
                        grad = _relu_backward(grad @ matrix.T, kept[layer])
                    elif ctx.input_needs_grad:
                        grad = grad @ matrix.T
                return (grad if ctx.input_needs_grad else None), grads[::-1]

        results = WORKER_POOL.map(run, range(len(ctx.chunks)))
        layer_grads = []
        for layer in range(len(pairs)):
            matrix_grad = results[0][1][layer][0]
            bias_grad = results[0][1][layer][1]
            for _, grads in results[1:]:
                matrix_grad = matrix_grad + grads[layer][0]
                bias_grad = None if bias_grad is None else bias_grad + grads[layer][1]
            layer_grads += [matrix_grad, bias_grad]
        grad_sequences = torch.cat([grad for grad, _ in results]) if ctx.input_needs_grad else None
        return grad_sequences, None, None, *layer_grads


def position_blocked_features(
    sequences: torch.Tensor, layers: list[list[PositionBlock]], length_out: int, chunk: int
) -> torch.Tensor:
    """Forward-only spectral stage by :func:`position_blocks`: ``(P, L)`` -> ``(P, C)``.

    Each convolution (blocks of matrix products into one position-major output), ReLU, then
    the mean over the last layer's positions; ``chunk`` pixels at a time, so the activations
    stay in the core's cache (:data:`SPECTRAL_CHUNK_PIXELS`).
    """
    outputs = []
    for start in range(0, sequences.shape[0], chunk):
        activation = sequences[start : start + chunk]
        for blocks in layers:
            width = blocks[-1][1].stop
            product = activation.new_empty(activation.shape[0], width)
            for rows, cols, matrix, bias in blocks:
                if bias is None:
                    torch.mm(activation[:, rows], matrix, out=product[:, cols])
                else:
                    torch.addmm(bias, activation[:, rows], matrix, out=product[:, cols])
            activation = product.relu_()
        outputs.append(activation.reshape(activation.shape[0], length_out, -1).mean(dim=1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
