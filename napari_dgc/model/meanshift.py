"""Unrolled Gaussian mean-shift over a square spatial window, on unit-norm embeddings.

One iteration moves every pixel embedding to the Gaussian-weighted mean of the embeddings in its
``(2r+1) x (2r+1)`` spatial neighbourhood and re-normalises it to unit length. Because the
embeddings are unit vectors, ``||z_i - z_j||^2 = 2 - 2 z_i . z_j``, so the Gaussian weight
``exp(-||z_i - z_j||^2 / (2 h^2))`` equals ``exp((z_i . z_j - 1) / h^2)``: the weights need one
dot product per neighbour offset, computed between the feature map and a shifted view of the
padded map (no ``unfold``, which would copy the map ``(2r+1)^2`` times).

The iterations are one custom :class:`torch.autograd.Function` with a hand-written backward
pass that keeps only the embeddings, the neighbour weights and dots and the norm per pixel of
each iteration: autograd through the plain formulation would store a dozen full-size
intermediates per neighbour offset and per iteration and spend most of a training step in the
backward pass. Groups of images run on worker threads, forward and backward (see
:class:`_WorkerPool`).

Neighbours marked invalid (outside the *image*) get weight zero, so a tile computed with a halo
of :attr:`DGCModel.receptive_radius` pixels and the image border marked gives exactly the
same embeddings as the whole image.

Without gradients (segmentation, evaluation) :func:`mean_shift` takes a forward-only path
that gives the same embeddings up to float rounding: on the CPU (float32) the compiled kernel
of :mod:`napari_dgc.model.cpu_kernels`, elsewhere (GPUs) :func:`_mean_shift_inference`, with about
half the work of the training path (see their docstrings and docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: Elements (pixels x embedding size) of the images processed together: two 64x64x32 crops,
#: 1 MiB of float32 per operand.
CHUNK_ELEMENTS = 2 * 64 * 64 * 32

#: ``eps`` of the embeddings' L2 normalisation (``F.normalize``'s default).
NORMALIZE_EPS = 1e-12

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


def _step_forward(
    z: torch.Tensor, inv_bw_sq: torch.Tensor, neighbour_ok: torch.Tensor | None, radius: int
) -> tuple[torch.Tensor, tuple]:
    """One mean-shift iteration on channels-last unit embeddings ``(B, H, W, D)``.

    Returns the new embeddings and what :func:`_step_backward` needs.

    The neighbour weights are ``exp((dot - 1) / h^2)`` without the softmax's division by their
    sum, as in :func:`_mean_shift_inference`: the weighted mean is rescaled to unit length, so
    a positive factor per pixel cancels, and the gradient of the softmax's sum is exactly zero
    (the gradient reaching the mean is orthogonal to it). The centre's weight is exactly 1.
    ``neighbour_ok`` is a float ``(n_offsets, B, H, W)`` mask, or None when every pixel of
    ``z`` is inside the image (neighbours in the zero padding then add zero vectors).
    """
    batch, h, w, _ = z.shape
    offsets = _offsets(radius)
    centre, last = len(offsets) // 2, len(offsets) - 1
    # Padded by 2r: dots are computed on the image grown by r, so each product map serves
    # the offset o and its mirror -o (dots_{-o}(p) = z(p) . z(p-o) = dots_o(p-o)).
    padded = F.pad(z, (0, 0, 2 * radius, 2 * radius, 2 * radius, 2 * radius))
    grown_h, grown_w = h + 2 * radius, w + 2 * radius
    grown = padded[:, radius : radius + grown_h, radius : radius + grown_w]
    # Offset-major (n_offsets, B, H, W) so every per-offset slice is contiguous.
    dots = torch.empty(len(offsets), batch, h, w, dtype=z.dtype, device=z.device)
    dots[centre] = 1.0  # z . z of a unit vector
    for index in range(centre + 1, len(offsets)):
        dy, dx = offsets[index]
        products = torch.linalg.vecdot(grown, _shifted(padded, radius, dy, dx, grown_h, grown_w))
        dots[index] = products[:, radius : radius + h, radius : radius + w]
        dots[last - index] = products[:, radius - dy : radius - dy + h, radius - dx : radius - dx + w]
    weights = torch.sub(dots, 1.0).mul_(inv_bw_sq).exp_()
    if neighbour_ok is not None:
        weights.mul_(neighbour_ok)
    mean = z.clone()  # the centre, weight 1
    for index, (dy, dx) in enumerate(offsets):
        if index != centre:
            mean.addcmul_(weights[index].unsqueeze(-1), _shifted(padded, 2 * radius, dy, dx, h, w))
    norm = torch.linalg.vector_norm(mean, dim=-1, keepdim=True).clamp_min_(1e-12)
    out = mean.div_(norm)
    return out, (z, out, norm, weights, dots, inv_bw_sq, radius)


def _step_backward(grad_out: torch.Tensor, saved: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_step_forward` w.r.t. ``z`` and ``inv_bw_sq``."""
    z, out, norm, weights, dots, inv_bw_sq, radius = saved
    batch, h, w, dim = z.shape
    offsets = _offsets(radius)
    centre, last = len(offsets) // 2, len(offsets) - 1
    options = dict(dtype=z.dtype, device=z.device)
    # d out / d mean: projection onto the tangent plane, scaled by 1 / norm.
    grad_mean = (grad_out - out * torch.linalg.vecdot(out, grad_out).unsqueeze(-1)).div_(norm)
    # [grad_mean | z] per pixel, zero padded by r: both are gathered from the neighbours.
    stacked = torch.zeros(batch, h + 2 * radius, w + 2 * radius, 2, dim, **options)
    inner = stacked[:, radius : radius + h, radius : radius + w]
    inner[..., 0, :] = grad_mean
    inner[..., 1, :] = z
    # d weight_o / d logit_o = weight_o (the centre's weight is the constant 1).
    grad_logits = torch.empty_like(weights)
    grad_logits[centre] = 0.0
    for index, (dy, dx) in enumerate(offsets):
        if index != centre:
            neighbour = _shifted(stacked, radius, dy, dx, h, w)[..., 1, :]
            grad_logits[index] = torch.linalg.vecdot(grad_mean, neighbour)
    grad_logits.mul_(weights)
    grad_inv_bw_sq = torch.linalg.vecdot(grad_logits.flatten(), dots.flatten() - 1.0)
    grad_dots_padded = F.pad(grad_logits.mul_(inv_bw_sq), (radius, radius, radius, radius))
    weights_padded = F.pad(weights, (radius, radius, radius, radius))
    # Gathered per pixel q from its neighbours q+o (offsets[last - i] is -offsets[i]):
    # mean_{q+o} uses z(q) with weight_{-o}(q+o), so grad_mean(q+o) comes back with it;
    # dots_o(q) = z(q) . z(q+o) and dots_{-o}(q+o) (the same pair seen from q+o) send
    # (grad_dots_o(q) + grad_dots_{-o}(q+o)) z(q+o). One op per offset for both terms.
    coefficients = torch.empty(len(offsets), batch, h, w, 2, 1, **options)
    for index, (dy, dx) in enumerate(offsets):
        if index == centre:
            continue
        mirrored = last - index
        coefficients[index, ..., 0, 0] = _shifted(weights_padded[mirrored], radius, dy, dx, h, w)
        torch.add(
            grad_dots_padded[index, :, radius : radius + h, radius : radius + w],
            _shifted(grad_dots_padded[mirrored], radius, dy, dx, h, w),
            out=coefficients[index, ..., 1, 0],
        )
    gathered = torch.zeros(batch, h, w, 2, dim, **options)
    gathered[..., 0, :] = grad_mean  # the centre's own term
    for index, (dy, dx) in enumerate(offsets):
        if index != centre:
            gathered.addcmul_(coefficients[index], _shifted(stacked, radius, dy, dx, h, w))
    return gathered.sum(-2), grad_inv_bw_sq.reshape(inv_bw_sq.shape)


class _WorkerPool:
    """Threads that each run torch operations with one intra-op thread.

    The images of a batch are independent, so running them on separate threads keeps every
    core busy with its own cache-resident operands; splitting each of the thousands of small
    per-offset operations across threads instead (intra-op parallelism) made a 2-thread
    training step only ~1.3x faster than a 1-thread one.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    def map(self, function: Callable, items: Sequence) -> list:
        """``[function(item) for item in items]``, on as many threads as torch may use."""
        size = min(torch.get_num_threads(), len(items))
        if size <= 1:
            return [function(item) for item in items]
        return list(self._get(size).map(function, items))

    def _get(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._size != size:
                if self._executor is not None:
                    self._executor.shutdown()
                self._executor, self._size = self._start(size), size
            return self._executor

    @staticmethod
    def _start(size: int) -> ThreadPoolExecutor:
        # torch.set_num_threads in a thread also changes the default of threads started
        # later, so the caller's value is put back once every worker has set its own.
        caller_threads = torch.get_num_threads()
        started = threading.Barrier(size)

        def single_threaded() -> None:
            torch.set_num_threads(1)
            started.wait()

        executor = ThreadPoolExecutor(size, thread_name_prefix="dgc-meanshift")
        for future in [executor.submit(single_threaded) for _ in range(size)]:
            future.result()
        torch.set_num_threads(caller_threads)
        return executor


#: The threads that run independent chunks of the training step (mean-shift, spectral stage).
WORKER_POOL = _WorkerPool()


class _MeanShift(torch.autograd.Function):
    """``iterations`` mean-shift steps on channels-last embeddings ``(B, H, W, D)``, which are
    first L2-normalised if ``normalize`` (as ``F.normalize``), else already unit-norm.

    The images are processed in chunks of :data:`CHUNK_ELEMENTS`, in parallel on
    :data:`WORKER_POOL`'s threads, forward and backward; each chunk keeps what
    :func:`_step_backward` needs per iteration (the embeddings, the neighbour weights and
    dots, the norm per pixel) and, with ``normalize``, the unit vectors and the input norms.
    """

    @staticmethod
    def forward(ctx, z, inv_bw_sq, neighbour_ok, radius: int, iterations: int, normalize: bool):
        per_chunk = max(1, CHUNK_ELEMENTS // max(1, z[0].numel()))
        chunks = [slice(start, start + per_chunk) for start in range(0, z.shape[0], per_chunk)]

        def run(chunk: slice) -> tuple[torch.Tensor, list]:
            with torch.no_grad():  # grad mode is per thread
                part, saved = z[chunk], []
                if normalize:
                    norm = torch.linalg.vector_norm(part, dim=-1, keepdim=True)
                    part = part / norm.clamp_min(NORMALIZE_EPS)
                    saved.append((part, norm))
                part_ok = None if neighbour_ok is None else neighbour_ok[:, chunk]
                for _ in range(iterations):
                    part, state = _step_forward(part, inv_bw_sq, part_ok, radius)
                    saved.append(state)
                return part, saved

        results = WORKER_POOL.map(run, chunks)
        ctx.chunks, ctx.saved, ctx.normalize = chunks, [saved for _, saved in results], normalize
        return torch.cat([part for part, _ in results])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        def run(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                grad_part, grad_inv_bw_sq = grad_out[ctx.chunks[index]], 0.0
                steps = ctx.saved[index][1:] if ctx.normalize else ctx.saved[index]
                for state in reversed(steps):
                    grad_part, grad_step = _step_backward(grad_part, state)
                    grad_inv_bw_sq = grad_inv_bw_sq + grad_step
                if ctx.normalize:  # x / max(|x|, eps): tangent projection / |x| unless clamped
                    unit, norm = ctx.saved[index][0]
                    radial = torch.linalg.vecdot(unit, grad_part).unsqueeze(-1).mul_(norm > NORMALIZE_EPS)
                    grad_part = (grad_part - unit * radial).div_(norm.clamp_min(NORMALIZE_EPS))
                return grad_part, grad_inv_bw_sq

        results = WORKER_POOL.map(run, range(len(ctx.chunks)))
        grad_inv_bw_sq = sum(grad for _, grad in results[1:]) + results[0][1]
        return torch.cat([grad for grad, _ in results]), grad_inv_bw_sq, None, None, None, None


def _mean_shift_inference(
    z: torch.Tensor,
    inv_bw_sq: float,
    neighbour_ok: torch.Tensor | None,
    radius: int,
    iterations: int,
) -> torch.Tensor:
    """Forward-only mean-shift of ``(B, D, H, W)`` unit embeddings; see :func:`mean_shift`.

    Same result as iterating :func:`_step_forward` up to float rounding, by changes that are
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
    # product map serves offset o and its mirror -o, as in _step_forward.
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
                    neighbours = source[
                        :,
                        top + radius + dy : top + 3 * radius + rows + dy,
                        radius + dx : radius + dx + grown_w,
                    ]
                    torch.sum(torch.mul(grown, neighbours, out=products), 0, out=dots)
                    weights[index] = dots[radius : radius + rows, radius : radius + width]
                    weights[last - index] = dots[
                        radius - dy : radius - dy + rows, radius - dx : radius - dx + width
                    ]
                weights.sub_(1.0).mul_(inv_bw_sq).exp_()
                if neighbour_ok is not None:
                    weights.mul_(neighbour_ok[:, image, top : top + rows])
                mean = target[:, pad + top : pad + top + rows, pad : pad + width]
                mean.copy_(source[:, pad + top : pad + top + rows, pad : pad + width])  # weight 1
                for index, (dy, dx) in enumerate(offsets):
                    if index != centre:
                        mean.addcmul_(
                            weights[index],
                            source[:, pad + top + dy : pad + top + dy + rows, pad + dx : pad + dx + width],
                        )
                norm = norm_buffer[:, :rows]
                torch.sum(torch.mul(mean, mean, out=products[:, :rows, :width]), 0, keepdim=True, out=norm)
                mean.div_(norm.sqrt_().clamp_min_(1e-12))
            source, target = target, source
        outputs[image] = source[:, pad : pad + height, pad : pad + width]
    return outputs


def uses_compiled_kernel(tensor: torch.Tensor, needs_grad: bool) -> bool:
    """Whether forward-only work on ``tensor`` runs in a compiled kernel of
    :mod:`napari_dgc.model.cpu_kernels`: float32 on the CPU, no gradient needed.
    """
    return not needs_grad and tensor.device.type == "cpu" and tensor.dtype == torch.float32


def _mean_shift_compiled(
    z: torch.Tensor,
    inv_bw_sq: float,
    valid: torch.Tensor | None,
    radius: int,
    iterations: int,
) -> torch.Tensor:
    """Forward-only mean-shift of ``(B, D, H, W)`` float32 CPU unit embeddings by the compiled
    kernel of :mod:`napari_dgc.model.cpu_kernels` (~2x faster than :func:`_mean_shift_inference`,
    same result up to float rounding); the images run on :data:`WORKER_POOL`'s threads.
    """
    from napari_dgc.model.cpu_kernels import mean_shift_cpu  # compiles on first use

    def run(image: int) -> torch.Tensor:
        channels_last = z[image].detach().permute(1, 2, 0).contiguous().numpy()
        mask = None if valid is None else valid[image].contiguous().numpy()
        shifted = mean_shift_cpu(channels_last, inv_bw_sq, radius, iterations, mask)
        return torch.from_numpy(shifted).permute(2, 0, 1)

    return torch.stack(WORKER_POOL.map(run, range(z.shape[0])))


def mean_shift(
    z: torch.Tensor,
    bandwidth: torch.Tensor,
    iterations: int,
    radius: int,
    valid: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Run ``iterations`` Gaussian mean-shift steps over a spatial window.

    Parameters
    ----------
    z : torch.Tensor
        ``(B, D, H, W)`` unit-norm embeddings (any embeddings with ``normalize``).
    bandwidth : torch.Tensor
        Scalar Gaussian bandwidth ``h`` (> 0), differentiable.
    iterations : int
        Number of unrolled iterations.
    radius : int
        Window radius ``r``; the window is ``(2r+1) x (2r+1)`` pixels.
    valid : torch.Tensor, optional
        ``(B, H, W)`` or ``(B, 1, H, W)`` mask of pixels inside the image; neighbours outside it
        are ignored. ``None``: every pixel of ``z`` is inside the image.
    normalize : bool
        L2-normalise ``z`` first, exactly as ``F.normalize(z, dim=1)``. With gradients this
        runs inside the mean-shift's chunks on the worker threads (forward and backward),
        instead of as separate full-size passes.

    Returns
    -------
    torch.Tensor
        ``(B, D, H, W)`` unit-norm embeddings after the iterations.

    Notes
    -----
    When no gradient is needed (``torch.no_grad``, inference mode, or neither input requires
    one) a forward-only path computes the same embeddings up to float rounding: a compiled
    kernel on the CPU (~2x faster again than the PyTorch one, docs/benchmarks.md), PyTorch's
    operations elsewhere (~2x faster than the training path's forward).
    """
    needs_grad = torch.is_grad_enabled() and (z.requires_grad or bandwidth.requires_grad)
    if normalize and (iterations == 0 or not needs_grad):
        z, normalize = F.normalize(z, dim=1, eps=NORMALIZE_EPS), False
    if iterations == 0:
        return z
    inv_bw_sq = 1.0 / (bandwidth * bandwidth)
    if valid is not None:
        valid = valid.reshape(z.shape[0], z.shape[2], z.shape[3]).to(z.dtype)
    if uses_compiled_kernel(z, needs_grad):
        return _mean_shift_compiled(z, float(inv_bw_sq), valid, radius, iterations)
    # Neighbours in the zero padding add zero vectors; only a valid mask needs multiplying in.
    neighbour_ok = None if valid is None else _neighbour_mask(valid, radius).to(z.dtype)
    if not needs_grad:
        return _mean_shift_inference(z, float(inv_bw_sq), neighbour_ok, radius, iterations)
    channels_last = z.permute(0, 2, 3, 1).contiguous()
    return _MeanShift.apply(channels_last, inv_bw_sq, neighbour_ok, radius, iterations, normalize).permute(
        0, 3, 1, 2
    )
