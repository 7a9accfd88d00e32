"""Unrolled Gaussian mean-shift over a square spatial window, on unit-norm embeddings.

One iteration moves every pixel embedding to the Gaussian-weighted mean of the embeddings in its
``(2r+1) x (2r+1)`` spatial neighbourhood and re-normalises it to unit length. Because the
embeddings are unit vectors, ``||z_i - z_j||^2 = 2 - 2 z_i . z_j``, so the Gaussian weight
``exp(-||z_i - z_j||^2 / (2 h^2))`` equals ``exp((z_i . z_j - 1) / h^2)``: the weights need one
dot product per neighbour offset, computed between the feature map and a shifted view of the
padded map (no ``unfold``, which would copy the map ``(2r+1)^2`` times).

The iteration is a custom :class:`torch.autograd.Function` with a hand-written backward pass
that keeps only the input embeddings, the normalised neighbour weights and the norm per pixel:
autograd through the plain formulation would store a dozen full-size intermediates per
neighbour offset and per iteration and spend most of a training step in the backward pass.

Neighbours marked invalid (outside the *image*) get weight zero, so a tile computed with a halo
of :attr:`DGCModel.receptive_radius` pixels and the image border marked gives exactly the
same embeddings as the whole image.

Without gradients (segmentation, evaluation) :func:`mean_shift` takes a forward-only path,
:func:`_mean_shift_inference`, that gives the same embeddings up to float rounding with
about half the work (see its docstring and docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


#: Elements (pixels x embedding size) of the images processed together: two 64x64x32 crops,
#: 1 MiB of float32 per operand.
CHUNK_ELEMENTS = 2 * 64 * 64 * 32

#: Elements (embedding size x pixels) of the row block the inference path updates at once:
#: about 64 rows of a 280-pixel-wide tile. Per-operation overhead dominates much smaller
#: blocks; measured 1.6 us/pixel for 5 iterations vs 2.4 with 8-row blocks.
INFERENCE_BLOCK_ELEMENTS = 64 * 280 * 32


def _offsets(radius: int) -> list[tuple[int, int]]:
    """Neighbour offsets ``(dy, dx)`` of the window, row-major; index ``len // 2`` is the centre."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span]


def _shifted(padded: torch.Tensor, radius: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """View of ``padded`` (B, H+2r, W+2r, ...) whose pixel ``(y, x)`` is image pixel ``(y+dy, x+dx)``."""
    return padded[:, radius + dy : radius + dy + h, radius + dx : radius + dx + w]


def _neighbour_mask(valid: torch.Tensor, radius: int) -> torch.Tensor:
    """(n_offsets, B, H, W) bool: is the neighbour at each offset inside the image."""
    _, h, w = valid.shape
    padded = F.pad(valid, (radius, radius, radius, radius))
    masks = [_shifted(padded, radius, dy, dx, h, w) for dy, dx in _offsets(radius)]
    mask = torch.stack(masks) > 0
    mask[len(masks) // 2] = True  # a pixel always counts itself (keeps the softmax finite)
    return mask


class _MeanShiftStep(torch.autograd.Function):
    """One mean-shift iteration on channels-last unit embeddings ``(B, H, W, D)``."""

    @staticmethod
    def forward(ctx, z, inv_bw_sq, neighbour_ok, radius: int):  # noqa: D102 - see class docstring
        batch, h, w, _ = z.shape
        offsets = _offsets(radius)
        centre = len(offsets) // 2
        # Padded by 2r: dots are computed on the image grown by r, so each product map serves
        # the offset o and its mirror -o (dots_{-o}(p) = z(p) . z(p-o) = dots_o(p-o)).
        padded = F.pad(z, (0, 0, 2 * radius, 2 * radius, 2 * radius, 2 * radius))
        grown_h, grown_w = h + 2 * radius, w + 2 * radius
        grown = padded[:, radius : radius + grown_h, radius : radius + grown_w]
        # Offset-major (n_offsets, B, H, W) so every per-offset slice is contiguous.
        dots = torch.empty(len(offsets), batch, h, w, dtype=z.dtype, device=z.device)
        dots[centre] = 1.0  # z . z of a unit vector
        last = len(offsets) - 1
        for index in range(centre + 1, len(offsets)):
            dy, dx = offsets[index]
            products = torch.linalg.vecdot(grown, _shifted(padded, radius, dy, dx, grown_h, grown_w))
            dots[index] = products[:, radius : radius + h, radius : radius + w]
            dots[last - index] = products[:, radius - dy : radius - dy + h, radius - dx : radius - dx + w]
        logits = (dots - 1.0) * inv_bw_sq
        logits = logits.masked_fill(~neighbour_ok, float("-inf"))
        weights = torch.softmax(logits, dim=0)
        shifted_mean = torch.zeros_like(z)
        for index, (dy, dx) in enumerate(offsets):
            shifted_mean.addcmul_(weights[index].unsqueeze(-1), _shifted(padded, 2 * radius, dy, dx, h, w))
        norm = shifted_mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out = shifted_mean / norm
        ctx.radius = radius
        ctx.save_for_backward(z, out, norm, weights, dots, inv_bw_sq)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - gradient of the forward above
        z, out, norm, weights, dots, inv_bw_sq = ctx.saved_tensors
        radius = ctx.radius
        batch, h, w, _ = z.shape
        offsets = _offsets(radius)
        centre = len(offsets) // 2
        padded = F.pad(z, (0, 0, radius, radius, radius, radius))
        # d out / d shifted_mean: projection onto the tangent plane, scaled by 1 / norm.
        grad_mean = (grad_out - out * torch.linalg.vecdot(out, grad_out).unsqueeze(-1)) / norm
        grad_padded = torch.zeros_like(padded)
        grad_weights = torch.empty_like(weights)
        for index, (dy, dx) in enumerate(offsets):
            neighbour = _shifted(padded, radius, dy, dx, h, w)
            grad_weights[index] = torch.linalg.vecdot(grad_mean, neighbour)
            _shifted(grad_padded, radius, dy, dx, h, w).addcmul_(weights[index].unsqueeze(-1), grad_mean)
        # softmax backward; masked neighbours have weight 0 and so get no gradient.
        grad_logits = weights * (grad_weights - (weights * grad_weights).sum(0, keepdim=True))
        grad_inv_bw_sq = (grad_logits * (dots - 1.0)).sum().reshape(inv_bw_sq.shape)
        grad_dots = grad_logits * inv_bw_sq
        # dots_o(p) = z(p) . z(p+o) sends grad_dots_o(p) z(p+o) to z(p) and grad_dots_o(p) z(p)
        # to z(p+o). Collecting per neighbour z(q+o) of pixel q: its coefficient is
        # grad_dots_o(q) + grad_dots_{-o}(q+o) (the same pair seen from q+o), so one vector op
        # per offset instead of two; offsets[n-1-i] is -offsets[i].
        grad_z = grad_padded[:, radius : radius + h, radius : radius + w].clone()
        grad_dots_padded = F.pad(grad_dots, (radius, radius, radius, radius))
        last = len(offsets) - 1
        for index, (dy, dx) in enumerate(offsets):
            if index == centre:
                continue
            mirrored = _shifted(grad_dots_padded[last - index], radius, dy, dx, h, w)
            coefficient = (grad_dots[index] + mirrored).unsqueeze(-1)
            grad_z.addcmul_(coefficient, _shifted(padded, radius, dy, dx, h, w))
        return grad_z, grad_inv_bw_sq, None, None


def _mean_shift_inference(
    z: torch.Tensor,
    inv_bw_sq: float,
    neighbour_ok: torch.Tensor | None,
    radius: int,
    iterations: int,
) -> torch.Tensor:
    """Forward-only mean-shift of ``(B, D, H, W)`` unit embeddings; see :func:`mean_shift`.

    Same result as iterating :class:`_MeanShiftStep` up to float rounding, by changes that are
    exact in real arithmetic:

    * the weights are ``exp((dot - 1) / h^2)`` without the softmax's division by their sum:
      the weighted mean is rescaled to unit length anyway, and the centre's weight is exactly
      ``1`` (the largest, as ``dot <= 1``), so nothing overflows;
    * neighbours in the zero padding add zero vectors, so only a ``valid`` mask
      (``neighbour_ok``, None without one) needs multiplying in;
    * channels-first row blocks with reused buffers, and two padded buffers that alternate as
      input and output, so no iteration pads, stacks or allocates a full-size map.
    """
    batch, dim, height, width = z.shape
    offsets = _offsets(radius)
    centre, last = len(offsets) // 2, len(offsets) - 1
    block = max(1, min(height, INFERENCE_BLOCK_ELEMENTS // (dim * width)))
    # Padded by 2r: the dot products of a block are computed on the block grown by r, so each
    # product map serves offset o and its mirror -o, as in _MeanShiftStep.forward.
    pad = 2 * radius
    grown_w = width + 2 * radius
    options = dict(dtype=z.dtype, device=z.device)
    source = torch.zeros(dim, height + 2 * pad, width + 2 * pad, **options)
    target = torch.zeros_like(source)
    weights_buffer = torch.empty(len(offsets), block, width, **options)
    products_buffer = torch.empty(dim, block + 2 * radius, grown_w, **options)
    dots_buffer = torch.empty(block + 2 * radius, grown_w, **options)
    norm_buffer = torch.empty(1, block, width, **options)
    outputs = torch.empty_like(z)
    for image in range(batch):
        source[:, pad : pad + height, pad : pad + width] = z[image]
        for _ in range(iterations):
            for top in range(0, height, block):
                rows = min(block, height - top)
                weights, products = weights_buffer[:, :rows], products_buffer[:, : rows + 2 * radius]
                dots = dots_buffer[: rows + 2 * radius]
                grown = source[:, top + radius : top + 3 * radius + rows, radius : radius + grown_w]
                weights[centre] = 1.0
                for index in range(centre + 1, len(offsets)):
                    dy, dx = offsets[index]
                    neighbours = source[:, top + radius + dy : top + 3 * radius + rows + dy,
                                        radius + dx : radius + dx + grown_w]
                    torch.sum(torch.mul(grown, neighbours, out=products), 0, out=dots)
                    weights[index] = dots[radius : radius + rows, radius : radius + width]
                    weights[last - index] = dots[radius - dy : radius - dy + rows,
                                                 radius - dx : radius - dx + width]
                weights.sub_(1.0).mul_(inv_bw_sq).exp_()
                if neighbour_ok is not None:
                    weights.mul_(neighbour_ok[:, image, top : top + rows])
                mean = target[:, pad + top : pad + top + rows, pad : pad + width]
                mean.copy_(source[:, pad + top : pad + top + rows, pad : pad + width])  # weight 1
                for index, (dy, dx) in enumerate(offsets):
                    if index != centre:
                        mean.addcmul_(weights[index], source[:, pad + top + dy : pad + top + dy + rows,
                                                             pad + dx : pad + dx + width])
                norm = norm_buffer[:, :rows]
                torch.sum(torch.mul(mean, mean, out=products[:, :rows, :width]), 0, keepdim=True, out=norm)
                mean.div_(norm.sqrt_().clamp_min_(1e-12))
            source, target = target, source
        outputs[image] = source[:, pad : pad + height, pad : pad + width]
    return outputs


def mean_shift(
    z: torch.Tensor,
    bandwidth: torch.Tensor,
    iterations: int,
    radius: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``iterations`` Gaussian mean-shift steps over a spatial window.

    Parameters
    ----------
    z : torch.Tensor
        ``(B, D, H, W)`` unit-norm embeddings.
    bandwidth : torch.Tensor
        Scalar Gaussian bandwidth ``h`` (> 0), differentiable.
    iterations : int
        Number of unrolled iterations.
    radius : int
        Window radius ``r``; the window is ``(2r+1) x (2r+1)`` pixels.
    valid : torch.Tensor, optional
        ``(B, H, W)`` or ``(B, 1, H, W)`` mask of pixels inside the image; neighbours outside it
        are ignored. ``None``: every pixel of ``z`` is inside the image.

    Returns
    -------
    torch.Tensor
        ``(B, D, H, W)`` unit-norm embeddings after the iterations.

    Notes
    -----
    When no gradient is needed (``torch.no_grad``, inference mode, or neither input requires
    one) a forward-only path computes the same embeddings up to float rounding, ~2x faster.
    """
    if iterations == 0:
        return z
    inv_bw_sq = 1.0 / (bandwidth * bandwidth)
    if valid is not None:
        valid = valid.reshape(z.shape[0], z.shape[2], z.shape[3]).to(z.dtype)
    if not (torch.is_grad_enabled() and (z.requires_grad or bandwidth.requires_grad)):
        # Zero padding needs no mask here (see _mean_shift_inference); only a valid mask does.
        neighbour_ok = None if valid is None else _neighbour_mask(valid, radius).to(z.dtype)
        return _mean_shift_inference(z, float(inv_bw_sq), neighbour_ok, radius, iterations)
    if valid is None:
        valid = torch.ones(z.shape[0], z.shape[2], z.shape[3], dtype=z.dtype, device=z.device)
    # Neighbours outside the image (zero padding or marked invalid) never count.
    neighbour_ok = _neighbour_mask(valid, radius)
    channels_last = z.permute(0, 2, 3, 1)
    # Images are independent: processing a few at a time keeps each per-offset operand in the
    # core's cache (measured ~25 % faster per training step than the whole batch at once).
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, channels_last[0].numel()))
    outputs = []
    for start in range(0, z.shape[0], per_chunk):
        part = channels_last[start : start + per_chunk].contiguous()
        part_ok = neighbour_ok[:, start : start + per_chunk]
        for _ in range(iterations):
            part = _MeanShiftStep.apply(part, inv_bw_sq, part_ok, radius)
        outputs.append(part)
    return torch.cat(outputs).permute(0, 3, 1, 2)
