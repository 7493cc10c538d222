"""What reproduces a run, kept in its ``run.json``: the user's overrides, the command line, the code's git commit
(and whether the tree had uncommitted changes), the versions of the packages that compute, the host and the device.
"""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the packages whose versions change a run's numbers
PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-image", "pydensecrf2", "zarr", "prefect", "pydantic",
            "safetensors", "numba", "dask")


def git_state(root: Path = ROOT) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the git tree holding the code (``None`` values outside git)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_provenance(overrides: dict, command: list[str], device: str) -> dict:
    """The ``provenance`` entry of ``run.json``: ``overrides`` (the user's ``--config`` file and ``--set`` pairs, as
    a nested dict), the full command line, git state, package versions, Python, host and device."""
    return {"overrides": overrides, "argv": command, "git": git_state(), "packages": package_versions(),
            "python": sys.version.split()[0], "host": socket.gethostname(), "platform": platform.platform(),
            "device": device}
