"""Locks of a run folder: the exclusive *run lock* of a writer, and the brief *manifest lock*.

``RUN/.run.lock`` is the run lock. Training (a new run or a resumed one) takes it before it
looks at what the folder holds and keeps it until the training generator ends or is closed, so
two trainings of one run cannot both write checkpoints. It is an ``fcntl.flock`` on an open
file: the kernel releases it when the holder dies, even by ``kill -9``, so a lock can never be
left behind by a dead process. The holder writes its pid, host, purpose and start time into
the file, only to say in the "busy" message who holds it (and, where ``flock`` is unavailable,
e.g. some network file systems, to tell a live holder from a stale record).

``RUN/.manifest.lock`` is the manifest lock: held for a moment around every read-modify-write
of ``run.json`` (a new checkpoint, the chosen checkpoint, the selected start), so updates of
several processes never lose one another. Choosing a checkpoint takes only this one, so a
person may choose while the run is still training.

Neither lock file is followed through a symbolic link: a link planted there is refused.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from napari_dgc.atomic import process_alive
from napari_dgc.errors import CheckpointError

try:  # locking is POSIX-only; without it a run relies on atomic replace alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

RUN_LOCK_NAME = ".run.lock"
MANIFEST_LOCK_NAME = ".manifest.lock"
#: How long taking the run lock waits for a brief holder (:meth:`RunDirectory.holder` probes it).
RUN_LOCK_WAIT_S = 2.0
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run lock, as the holder recorded it.

    Attributes
    ----------
    pid : int or None
        Process id (``None`` if the record is unreadable).
    host : str
        Host name of the holder.
    since : str
        When it took the lock (ISO 8601, UTC).
    purpose : str
        What it does, e.g. ``"trained"``.
    """

    pid: int | None
    host: str
    since: str
    purpose: str

    def describe(self) -> str:
        """``"trained by pid 1234 on host X since 2024-..."``."""
        if self.pid is None:
            return "held by another process (its record is unreadable)"
        return f"{self.purpose} by pid {self.pid} on host {self.host} since {self.since}"


def _open_lock_file(run_path: Path, name: str) -> int:
    """Open (creating) a lock file of the run, refusing a symbolic link in its place."""
    file = run_path / name
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(file, flags, 0o666)
    except OSError as error:
        if file.is_symlink() or error.errno == errno.ELOOP:
            raise CheckpointError(
                f"{file}: is a symbolic link (to {os.readlink(file)}); refusing to write through it, "
                "remove it"
            ) from None
        raise CheckpointError(f"{file}: cannot open the lock file ({error.strerror or error})") from error


def _read_holder(fd: int) -> LockHolder:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode("utf-8"))
        return LockHolder(
            int(record["pid"]), str(record["host"]), str(record["since"]), str(record["purpose"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder(None, "", "", "")


def _write_holder(fd: int, purpose: str) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "purpose": purpose,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)


def _stale(holder: LockHolder) -> bool:
    """Whether a recorded holder is certainly gone (same host, no such process)."""
    return holder.pid is not None and holder.host == socket.gethostname() and not process_alive(holder.pid)


class RunLock:
    """The exclusive run lock of one run folder (see the module docstring).

    Parameters
    ----------
    run_path : Path
        The run folder (it must exist).
    purpose : str
        Recorded for the "busy" message of others, e.g. ``"trained"``.
    """

    def __init__(self, run_path: Path, purpose: str = "trained") -> None:
        self.run_path = Path(run_path)
        self.purpose = purpose
        self._fd: int | None = None
        self._flock = fcntl is not None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, wait_s: float = RUN_LOCK_WAIT_S) -> RunLock:
        """Take the lock, waiting up to ``wait_s`` for a brief holder.

        Raises
        ------
        CheckpointError
            ``"run RUN is busy: trained by pid 1234 on host X since ..."`` if another process,
            thread or generator holds it; or if the lock file is a symbolic link.
        """
        if self._fd is not None:
            return self
        fd = _open_lock_file(self.run_path, RUN_LOCK_NAME)
        deadline = time.monotonic() + wait_s
        try:
            while not self._try_lock(fd):
                if time.monotonic() >= deadline:
                    raise CheckpointError(f"run {self.run_path} is busy: {_read_holder(fd).describe()}")
                time.sleep(0.05)
            _write_holder(fd, self.purpose)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _try_lock(self, fd: int) -> bool:
        if self._flock:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as error:
                if error.errno not in _NO_FLOCK:
                    raise
                self._flock = False  # e.g. NFS without lock support: fall back on the record
        holder = _read_holder(fd)
        return os.fstat(fd).st_size == 0 or _stale(holder)

    def release(self) -> None:
        """Release the lock (the record is cleared first, so nobody reads a stale holder)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def run_lock_holder(run_path: Path) -> LockHolder | None:
    """Who holds the run lock of ``run_path`` now, or ``None`` if nobody does.

    Never waits and never takes the lock for longer than a probe (a trainer starting at that
    moment waits :data:`RUN_LOCK_WAIT_S` for it).
    """
    file = Path(run_path) / RUN_LOCK_NAME
    if not file.exists() and not file.is_symlink():
        return None
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # a planted link: whoever writes will refuse it and say so
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            except OSError as error:
                if error.errno not in _NO_FLOCK:
                    raise
            else:
                return None
        holder = _read_holder(fd)
        return None if os.fstat(fd).st_size == 0 or _stale(holder) else holder
    finally:
        os.close(fd)  # also releases the probe's shared lock


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def manifest_lock(run_path: Path) -> Iterator[None]:
    """Hold the manifest lock of a run for one read-modify-write of ``run.json``.

    ``flock`` excludes other open files, so threads of one process (each opening its own)
    exclude each other too; a per-folder thread lock also covers platforms without ``fcntl``.
    """
    key = os.path.realpath(run_path)
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(key, threading.Lock())
    with thread_lock:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fd = _open_lock_file(Path(run_path), MANIFEST_LOCK_NAME)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno not in _NO_FLOCK:
                    raise
            yield
        finally:
            os.close(fd)
