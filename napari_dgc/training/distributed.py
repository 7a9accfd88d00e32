"""Data-parallel training over processes (:mod:`torch.distributed`): the group a run trains in.

``torchrun --nproc-per-node N -m napari_dgc train ...`` starts ``N`` processes and tells each
its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`process_group` turns that into a :class:`ProcessGroup`: gloo when the
run trains on the CPU, NCCL (one GPU per process, ``cuda:LOCAL_RANK``) on CUDA, with a timeout so
that a rank that died or hangs gives every other rank a clear :class:`DistributedError` instead
of a hang. Without that environment (or with ``WORLD_SIZE=1``) the group is
:data:`SINGLE_PROCESS`, whose collectives return their input: one process trains exactly as it
did before data parallelism existed.

What is kept identical on every rank, and how (docs/scaling.md, "Data-parallel training"):
gradients are summed over the ranks and divided by their number after ``backward`` (a bucketed
all-reduce, as DistributedDataParallel does, but called by the trainer: the trainer runs the
model's stages itself, not ``forward()``, so DDP's hooks would not see the step), the centroid
EMA and the reported cluster usage use all-reduced sums, and whatever rank 0 decides alone (the dataset
normalisation, the initialised model, the anchor's centroids) is broadcast.
"""

from __future__ import annotations

import datetime
import importlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from napari_dgc.errors import DGCError

#: Seconds a rank waits for the others in one collective before giving up (``--dist-timeout``).
#: Rank 0 writes checkpoints while the others wait at a barrier, so it must cover one checkpoint.
DEFAULT_TIMEOUT_S = 300.0
#: The timeout of the group this process joined (:func:`process_group`).
_joined_timeout_s: float | None = None
#: Whether a collective of that group failed: tearing down a gloo group with a dead peer aborts
#: the process (``std::terminate`` in its destructor), so such a group is left to the exit.
_failed = False
#: Largest gradient bucket of one all-reduce (DistributedDataParallel's default).
BUCKET_BYTES = 25 * 2**20


class DistributedError(DGCError):
    """Another process of a data-parallel training stopped or did not answer in time."""


class WorldSizeWarning(RuntimeWarning):
    """A run continues on another number of processes than trained it (not bit-exact)."""


@dataclass(frozen=True)
class ProcessGroup:
    """A process's place in a data-parallel training and the collectives it takes part in.

    Attributes
    ----------
    rank : int
        This process's rank, 0 .. ``world_size - 1``; rank 0 alone writes the run folder.
    world_size : int
        Number of processes (1: no communication at all).
    device : torch.device
        Where the collectives' tensors must be (the GPU of this rank under NCCL, else the CPU).
    timeout_s : float
        How long a collective waits for the other ranks.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (``tensor`` itself in one process).

        Every rank receives the same bits (the reduction is done once and shared), so decisions
        taken on the result agree everywhere.
        """
        if self.world_size == 1:
            return tensor
        reduced = tensor.detach().to(self.device, copy=True)
        self._collective("all-reduce", dist.all_reduce, reduced)
        return reduced.to(tensor.device)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (``tensor`` itself in one process)."""
        if self.world_size == 1:
            return tensor
        shared = tensor.detach().to(self.device, copy=True)
        self._collective("broadcast", dist.broadcast, shared, src=0)
        return shared.to(tensor.device)

    def barrier(self) -> None:
        """Wait until every rank got here (nothing in one process)."""
        if self.world_size > 1:
            # A broadcast rather than dist.barrier: it honours the group's timeout on every
            # backend and needs no device guess under NCCL.
            self.broadcast(torch.zeros(1))

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks, in buckets of at most
        :data:`BUCKET_BYTES` (one all-reduce each instead of one per tensor).

        Every rank must present the same parameters with a gradient, which holds because the
        trainer's graph does not depend on the data.
        """
        if self.world_size == 1:
            return
        gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
        for bucket in _buckets(gradients, BUCKET_BYTES):
            flat = self.all_reduce_sum(torch.cat([gradient.reshape(-1) for gradient in bucket]))
            flat /= self.world_size
            offset = 0
            for gradient in bucket:
                gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
                offset += gradient.numel()

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's float64 array of the same shape on every rank (the others' values are ignored)."""
        return self.broadcast(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))).numpy()

    def _collective(self, name: str, operation, *args, **kwargs) -> None:
        global _failed
        try:
            operation(*args, **kwargs)
        except RuntimeError as error:  # DistBackendError and gloo's socket errors
            _failed = True
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {name} with the other processes failed "
                f"({reason}); another rank stopped or did not answer within {self.timeout_s:g} s. "
                "The run folder keeps its last complete checkpoint: continue with --resume (torchrun "
                "--max-restarts does so by itself)"
            ) from None


#: The group of a training in one process: every collective returns its input.
SINGLE_PROCESS = ProcessGroup()


def launched_world_size() -> int:
    """The number of processes the launcher (torchrun) started, from ``WORLD_SIZE`` (1 without)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DGCError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def is_restart() -> bool:
    """Whether torchrun restarted this group after a failure (``--max-restarts``)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0")


def process_group(device: torch.device, timeout_s: float | None = None) -> ProcessGroup:
    """The group this process trains in: joined from the launcher's environment on first use.

    Parameters
    ----------
    device : torch.device
        The training device: CUDA trains with NCCL on ``cuda:LOCAL_RANK``, anything else with
        gloo.
    timeout_s : float, optional
        Seconds a collective waits for the others (default :data:`DEFAULT_TIMEOUT_S`, or the
        environment's ``NAPARI_DGC_DIST_TIMEOUT``); only used when the group is joined here.

    Returns
    -------
    ProcessGroup
        :data:`SINGLE_PROCESS` without a launcher (or ``WORLD_SIZE=1``).

    Raises
    ------
    DistributedError
        If the other processes do not all join within the timeout.
    """
    if not dist.is_available() or (launched_world_size() == 1 and not dist.is_initialized()):
        return SINGLE_PROCESS
    global _joined_timeout_s
    if _joined_timeout_s is not None:
        timeout_s = _joined_timeout_s
    elif timeout_s is None:
        timeout_s = float(os.environ.get("NAPARI_DGC_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    nccl = device.type == "cuda"
    if nccl:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch._dynamo, first imported by the optimiser, keeps a reference to a group that
        # exists when it is imported, so destroy_process_group() would leave gloo's threads
        # running into the interpreter's exit, where one of them aborts the finished process
        # (std::terminate while it frees a tensor of the last collective, ~5 % of runs).
        importlib.import_module("torch._dynamo")
        try:
            dist.init_process_group("nccl" if nccl else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as error:
            raise DistributedError(
                f"cannot join the {launched_world_size()} training processes within {timeout_s:g} s "
                f"({str(error).strip().splitlines()[0]})"
            ) from None
        _joined_timeout_s = timeout_s
    group = ProcessGroup(
        dist.get_rank(), dist.get_world_size(), device if nccl else torch.device("cpu"), timeout_s
    )
    return group if group.world_size > 1 else SINGLE_PROCESS


def leave() -> None:
    """Leave the process group if this process joined one (before it exits)."""
    global _joined_timeout_s, _failed
    if dist.is_available() and dist.is_initialized() and not _failed:
        # Every rank tears down together: one that left first makes the others' teardown meet
        # a closed peer (the abort above).
        try:
            dist.barrier()
        except RuntimeError:
            _failed = True
        if not _failed:
            dist.destroy_process_group()
    _joined_timeout_s = None


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of ``tensors`` of one dtype and device, each at most ``limit`` bytes
    (a larger tensor is a bucket of its own).
    """
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (
            size + nbytes > limit or tensor.dtype != bucket[0].dtype or tensor.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket
