"""What an Edge shard folder costs on disk and who holds it: headroom rules, disk-full and lock detection, the
engine's own failures.

Edge memory-maps its files. A page it touches on a full disk kills the process with SIGBUS instead of raising,
so every operation first checks that the bytes it can make the engine allocate are free (measured on a full
tmpfs with qdrant-edge-py 0.9):

* opening a shard (for reading too) on a memory file system (tmpfs) fills every vector storage chunk file
  (``chunk_*.mmap``, 32 MiB each, created sparse): the holes of those files must be free (on disk file systems
  reading a hole allocates nothing);
* there, a new shard costs one chunk per named vector at its first opening;
* a write touches about its own size in the write-ahead log and the segments (counted four times);
* the optimiser writes new segments beside the old ones (the store's allocated size).

On top of what an operation costs, :func:`margin` keeps a reserve proportional to the store (payload pages,
id trackers and flags grow with it), never less than :data:`MIN_MARGIN`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from typing import Any

CHUNK_BYTES = 32 * 2**20
"""Size of one vector storage chunk file (``chunk_N.mmap``), filled when a shard is opened."""

MIN_MARGIN = 16 * 2**20
"""The smallest reserve kept free beyond what an operation costs."""

_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk is full", "disk quota exceeded", "os error 122")
_LOCKED_TEXT = ("wouldblock", "os error 11", "resource temporarily unavailable", "already locked")
_READ_ONLY_TEXT = ("read-only file system", "os error 30", "permission denied", "os error 13")


def free_bytes(path: str) -> int:
    """Free bytes on the file system under ``path`` (its nearest existing parent for a folder not made yet)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _files(path: str):
    for root, _, names in os.walk(path):
        for name in names:
            try:
                yield os.path.join(root, name), os.stat(os.path.join(root, name))
            except OSError:
                continue


def allocated_bytes(path: str) -> int:
    """Bytes the files under ``path`` occupy on disk (sparse holes not counted)."""
    return sum(getattr(st, "st_blocks", 0) * 512 or st.st_size for _, st in _files(path))


MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "shmem", "hugetlbfs"})


def file_system_type(path: str) -> str | None:
    """The type of the file system ``path`` lies on (Linux: /proc/self/mounts), or None when unknown."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = -1, None
    for point, fs in mounts:
        point = point.replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best, kind = len(point), fs
    return kind


def fills_holes_on_open(path: str) -> bool:
    """Whether the engine's opening allocates the holes of its sparse files under ``path`` (memory file systems)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return file_system_type(path) in MEMORY_FILE_SYSTEMS


def opening_cost(shard_path: str) -> int:
    """Bytes opening the shard makes the engine allocate: the holes of its vector storage chunk files on a memory
    file system, else nothing."""
    if not fills_holes_on_open(shard_path):
        return 0
    total = 0
    for path, st in _files(shard_path):
        name = os.path.basename(path)
        if name.startswith("chunk_") and name.endswith(".mmap"):
            total += max(0, st.st_size - getattr(st, "st_blocks", 0) * 512)
    return total


def margin(shard_path: str) -> int:
    """The reserve kept free beyond an operation's own cost: 1/16 of the store, at least :data:`MIN_MARGIN`."""
    return max(MIN_MARGIN, allocated_bytes(shard_path) // 16)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc).lower() for text in _DISK_FULL_TEXT)


def is_locked(exc: BaseException) -> bool:
    return any(text in str(exc).lower() for text in _LOCKED_TEXT)


def is_read_only(exc: BaseException) -> bool:
    """The engine could not write the folder (a read-only mount, or no permission)."""
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return True
    return any(text in str(exc).lower() for text in _READ_ONLY_TEXT)


def is_engine_panic(exc: BaseException) -> bool:
    """A Rust panic inside the engine, raised as pyo3's PanicException: a BaseException (so that a bare
    ``except Exception`` lets it through) that cannot be imported by name, hence recognised by its type."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ in ("pyo3_runtime", "builtins")


def engine_failure(exc: BaseException) -> bool:
    """An error raised by the engine that the store turns into its own: an Exception or a panic, never
    KeyboardInterrupt or SystemExit."""
    return isinstance(exc, Exception) or is_engine_panic(exc)


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text[:limit] + ("..." if len(text) > limit else "")


def lock_holder(path: str) -> int | None:
    """The id of the process holding a lock on ``path`` (Linux: /proc/locks), or None when unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not the holder
            continue
        try:
            pid, where = int(fields[4]), fields[5]
            major, minor, inode = where.split(":")
        except (IndexError, ValueError):
            continue
        if int(inode) == st.st_ino and (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
            return pid
    return None


def write_json_atomic(path: str, data: Any) -> None:
    """Replaces ``path`` with ``data`` as JSON: the old or the new content survives a crash, never a part."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself is durable once the directory is synced
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
