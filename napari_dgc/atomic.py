"""Atomic file writes: a crash at any moment leaves either the old file or the new one.

Each writer writes a temporary file in the destination folder, flushes it to disk, then
renames it over the destination with :func:`os.replace` (atomic on POSIX and Windows).

Temporary files are named ``.<name>.<host>-<pid>-<random>.dgctmp`` (``host``: a short hash of
the host name), so a writer killed before its rename leaves a file that
:func:`remove_stale_temporaries` recognises and removes once that process is gone. They are
created with mode ``0o666`` less the umask, like any file the user's programs write (a shared
lab folder with umask 002 gets group-writable results).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
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
    fd, tmp_name = _create_temporary(path)
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


TEMP_SUFFIX = ".dgctmp"
_TEMP_PATTERN = re.compile(
    r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$"
)


def host_tag() -> str:
    """Short hash of this host's name, in temporary file names (host names may hold any character)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _create_temporary(path: Path) -> tuple[int, str]:
    """Create and open a new temporary file next to ``path``; return ``(fd, name)``.

    ``os.open`` with mode ``0o666`` lets the kernel apply the umask (``tempfile.mkstemp`` would
    force ``0o600`` on every result); ``O_EXCL | O_NOFOLLOW`` never reuses or follows a file
    planted under the name.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    prefix = f".{path.name}.{host_tag()}-{os.getpid()}-"
    for _ in range(100):
        name = str(path.parent / f"{prefix}{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` when that cannot be told)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or the platform cannot tell
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers of this host that are gone.

    Only files named by :func:`atomic_open` are touched, and only when their process no longer
    exists; those of other hosts (a shared file system) are left alone, as their writers may
    be alive. Returns the files removed.
    """
    removed = []
    tag = host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.match(entry.name)
        if match is None or match["host"] != tag or int(match["pid"]) == os.getpid():
            continue
        if process_alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass  # another process cleaned it first, or no permission: harmless
    return removed


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
