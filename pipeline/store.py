"""LabelStore: per-image arrays (labels or score maps) in a Zarr v3 hierarchy.

Layout: ``<path>/zarr.json`` is a Zarr v3 group whose attributes hold the provenance (stage,
config digest, …); each image is a child array ``<path>/<image_id>/`` with a single chunk, so
images of any size live side by side. A write builds the new array in the hidden sibling ``.<name>.staging/`` and
swaps it into place with one atomic rename, so a reader — in this or another process — sees
either the old or the new array, never a torn one, and a killed writer leaves only staging
debris that is cleared on the next open. Any Zarr v3 reader can open the store
(``zarr.open_group(path)``).

>>> import tempfile, numpy as np
>>> s = LabelStore(tempfile.mkdtemp() + "/labels.zarr")
>>> s.write("img1", np.array([[0, 1], [255, 1]], np.uint8))
>>> s.read("img1").tolist(), "img1" in s, s.ids()
([[0, 1], [255, 1]], True, ['img1'])
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.fsutil import replace_dir

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class LabelStore:
    """Zarr v3 store of per-image arrays with atomic, resumable writes."""

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(self.path), mode="a", zarr_format=3)
        self._staging = self.path.parent / f".{self.path.name}.staging"
        if attrs:
            self.update_attrs(attrs)

    # provenance -----------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(zarr.open_group(str(self.path), mode="r", zarr_format=3).attrs)

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        zarr.open_group(str(self.path), mode="a", zarr_format=3).attrs.update(attrs)

    # contents ---------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Image ids stored, sorted."""
        return sorted(p.name for p in self.path.iterdir()
                      if not p.name.startswith(".") and (p / "zarr.json").is_file())

    def __contains__(self, image_id: str) -> bool:
        return (self.path / image_id / "zarr.json").is_file()

    def __len__(self) -> int:
        return len(self.ids())

    def write(self, image_id: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Store ``array`` for ``image_id`` atomically (replacing any earlier array)."""
        if not _ID_RE.match(image_id):
            raise ValueError(f"image id {image_id!r} is not a valid store name")
        array = np.ascontiguousarray(array)
        self._staging.mkdir(exist_ok=True)
        tmp = self._staging / f"{image_id}.{uuid.uuid4().hex}"
        arr = zarr.create_array(store=str(tmp), shape=array.shape, dtype=array.dtype,
                                chunks=array.shape or (1,), zarr_format=3, attributes=attrs or {})
        arr[...] = array
        replace_dir(tmp, self.path / image_id)

    def read(self, image_id: str) -> np.ndarray:
        if image_id not in self:
            raise KeyError(f"{image_id!r} is not in the store {self.path}")
        return zarr.open_array(str(self.path / image_id), mode="r", zarr_format=3)[...]

    def read_attrs(self, image_id: str) -> dict[str, Any]:
        return dict(zarr.open_array(str(self.path / image_id), mode="r", zarr_format=3).attrs)

    def clear_staging(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def reset(self, attrs: dict[str, Any] | None = None) -> None:
        """Remove every array and set fresh attributes (used when a stage's config changed)."""
        self.clear_staging()
        for p in self.path.iterdir():
            if p.name != "zarr.json":
                shutil.rmtree(p) if p.is_dir() else os.remove(p)
        g = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        for k in list(g.attrs.keys()):
            del g.attrs[k]
        if attrs:
            g.attrs.update(attrs)


def open_for_stage(path: Path, key: str, attrs: dict[str, Any]) -> LabelStore:
    """A store for a stage with config digest ``key``: kept (to resume) if its key matches, else emptied."""
    store = LabelStore(path)
    store.clear_staging()
    if store.attrs.get("key") != key:
        store.reset({**attrs, "key": key})
    return store
