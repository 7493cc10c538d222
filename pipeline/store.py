"""LabelStore: per-image arrays (labels or score maps) in a Zarr v3 hierarchy.

Layout: ``<path>/zarr.json`` is a Zarr v3 group whose attributes hold the provenance (stage,
config digest, …); each image is a child array ``<path>/<image_id>/`` with a single chunk, so
images of any size live side by side. A write builds the new array in the hidden sibling ``.<name>.staging/`` and
swaps it into place with one atomic rename, so a reader — in this or another process — sees
either the old or the new array, never a torn one, and a killed writer leaves only staging
debris that is cleared on the next open. Every file of the new array and the folders holding it are fsynced
before the rename, so a power cut cannot leave a renamed entry with unwritten chunks. Any Zarr v3 reader can open
the store (``zarr.open_group(path)``).

A stage's store carries the stage's cache key (``open_for_stage``); every entry is stamped with the key the store had
when the entry was written, and a writer refuses to swap an entry into a store that was reset under another key
meanwhile, so a store never mixes entries of two configs. ``complete_ids`` lists the entries whose stamp matches and
whose chunk is on disk: what a resumed or verified stage counts as done.

>>> import tempfile, numpy as np
>>> s = LabelStore(tempfile.mkdtemp() + "/labels.zarr")
>>> s.write("img1", np.array([[0, 1], [255, 1]], np.uint8))
>>> s.read("img1").tolist(), "img1" in s, s.ids()
([[0, 1], [255, 1]], True, ['img1'])
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.fsutil import fsync_dir, fsync_tree, replace_dir

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: names inside a store that belong to Zarr, never to an image
RESERVED_NAMES = frozenset({"zarr.json"})
#: the entry attribute holding the store key the entry was written under
KEY_ATTR = "store_key"


def image_id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot name an image (None: it can): one rule for split lists and label stores.

    An id starts with a letter or digit and holds only letters, digits and ``_ . -`` (so it stays inside its
    folder), and is not a name Zarr uses.

    >>> image_id_problem("2007_000032"), image_id_problem("../a.zarr/x") is not None, image_id_problem("zarr.json")
    (None, True, "'zarr.json' is a name the label store's Zarr metadata uses")
    """
    if not isinstance(image_id, str) or not _ID_RE.match(image_id):
        return f"{image_id!r} is not an image id (letters, digits and _ . - only, not starting with . or -)"
    if image_id in RESERVED_NAMES:
        return f"{image_id!r} is a name the label store's Zarr metadata uses"
    return None


def check_image_id(image_id: str) -> str:
    """``image_id``, or ``ValueError`` saying why it cannot name an image (``image_id_problem``)."""
    problem = image_id_problem(image_id)
    if problem:
        raise ValueError(problem)
    return image_id


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
    @property
    def key(self) -> str | None:
        """The cache key of the stage that owns the store (None: a store outside a stage)."""
        return self.attrs.get("key")

    def ids(self) -> list[str]:
        """Image ids stored, sorted."""
        return sorted(p.name for p in self.path.iterdir()
                      if not p.name.startswith(".") and p.name not in RESERVED_NAMES and (p / "zarr.json").is_file())

    def complete_ids(self) -> list[str]:
        """The stored ids whose entry was written under the store's current key and whose chunk is on disk, sorted:
        an entry whose chunk was deleted (it would read as zeros) or that another config wrote is not among them."""
        key = self.key
        return [i for i in self.ids() if self._entry_complete(i, key)]

    def _entry_complete(self, image_id: str, key: str | None) -> bool:
        entry = self.path / image_id
        try:
            meta = json.loads((entry / "zarr.json").read_text())
        except (OSError, ValueError):
            return False
        if key is not None and meta.get("attributes", {}).get(KEY_ATTR) != key:
            return False
        ndim = len(meta.get("shape", ()))
        return (entry / "c").joinpath(*["0"] * ndim).is_file()  # the single chunk (default key encoding)

    def __contains__(self, image_id: str) -> bool:
        return image_id_problem(image_id) is None and (self.path / image_id / "zarr.json").is_file()

    def __len__(self) -> int:
        return len(self.ids())

    def write(self, image_id: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Store ``array`` for ``image_id`` atomically (replacing any earlier array), stamped with the store's key.

        Refused (``RuntimeError``) when the store was reset under another key since this writer's first write: a
        writer of an old config never adds its entry to a new config's store.
        """
        check_image_id(image_id)
        array = np.ascontiguousarray(array)
        if not hasattr(self, "_writer_key"):
            self._writer_key = self.key
        self._staging.mkdir(exist_ok=True)
        tmp = self._staging / f"{image_id}.{uuid.uuid4().hex}"
        stamp = {KEY_ATTR: self._writer_key} if self._writer_key is not None else {}
        arr = zarr.create_array(store=str(tmp), shape=array.shape, dtype=array.dtype, chunks=array.shape or (1,),
                                zarr_format=3, attributes={**(attrs or {}), **stamp},
                                config={"write_empty_chunks": True})  # every entry has its chunk file
        arr[...] = array
        fsync_tree(tmp)
        if self.key != self._writer_key:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"label store {self.path} was reset under another config while this process wrote "
                               f"{image_id!r}: two runs write one run folder")
        replace_dir(tmp, self.path / image_id)
        fsync_dir(self.path)

    def _entry(self, image_id: str) -> Path:
        problem = image_id_problem(image_id)
        if problem:
            raise KeyError(f"{problem}: not read from the store {self.path}")
        if not (self.path / image_id / "zarr.json").is_file():
            raise KeyError(f"{image_id!r} is not in the store {self.path}")
        return self.path / image_id

    def read(self, image_id: str) -> np.ndarray:
        return zarr.open_array(str(self._entry(image_id)), mode="r", zarr_format=3)[...]

    def read_attrs(self, image_id: str) -> dict[str, Any]:
        attrs = dict(zarr.open_array(str(self._entry(image_id)), mode="r", zarr_format=3).attrs)
        attrs.pop(KEY_ATTR, None)
        return attrs

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
