"""Atomic, durable file and directory replacement: write aside under a unique name, fsync, rename, fsync the folder."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file and folder under ``path`` (and ``path``) to disk, deepest first."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))


def temp_sibling(path: Path) -> Path:
    """A unique hidden name beside ``path``: two writers of one file never share a temporary."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def commit_file(tmp: Path, path: Path) -> None:
    """Make the written file ``tmp`` durable and rename it over ``path`` (atomic), then flush the folder."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a unique temporary sibling, fsync, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    with open(tmp, "wb") as f:
        f.write(data)
    commit_file(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` atomically if it exists.

    On Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two names in one step, so a reader sees
    either the old or the new directory; the old one is then removed. Elsewhere the old directory
    is renamed aside first (a very short window without ``dst``).
    """
    src, dst = Path(src), Path(dst)
    try:
        os.rename(src, dst)  # atomic when dst does not exist
        return
    except OSError:
        if not dst.exists():
            raise
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE)
        if rc == 0:
            shutil.rmtree(src, ignore_errors=True)  # src now holds the old contents
            return
    aside = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.old")
    os.rename(dst, aside)
    os.rename(src, dst)
    shutil.rmtree(aside, ignore_errors=True)
