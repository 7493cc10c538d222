"""Atomic file and directory replacement."""
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
