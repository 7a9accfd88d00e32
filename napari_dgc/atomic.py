"""Atomic file writes: a crash at any moment leaves either the old file or the new one.

Each writer writes a temporary file in the destination folder, flushes it to disk, then
renames it over the destination with :func:`os.replace` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` only if the block finishes without error.

    Parameters
    ----------
    path : path-like
        Final destination.
    mode : str
        ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields
    ------
    file object
        The temporary file to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """Save torch tensors to a safetensors file atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.safetensors`` file.
    tensors : mapping of str to torch.Tensor
        Tensors to save; they are made contiguous and moved to the CPU.
    metadata : mapping of str to str, optional
        Free-form string metadata stored in the file header.
    """
    from safetensors.torch import save

    payload = save(
        {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
        metadata=dict(metadata) if metadata else None,
    )
    atomic_write_bytes(path, payload)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks.

    Checkpoints and model folders record it when written and check it when loaded, so a
    truncated or altered weights file is refused instead of half-loaded.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
