"""LabelStore: per-image arrays (labels or score maps) in a Zarr v3 hierarchy, loose or packed.

Layout: ``<path>/zarr.json`` is a Zarr v3 group whose attributes hold the provenance (stage, config digest, …). An
image lives in one of two forms, both readable by any Zarr v3 reader (``zarr.open_group(path)``):

- *loose*: a child array ``<path>/<image_id>/`` with a single chunk (2 files and 3 folders an image: what every
  per-image worker writes, and the whole layout of stores written before packs existed, which read as they are);
- *packed*: a slice of a pack, a 1-D array ``<path>/_packs/<pack>/`` of the store's dtype holding up to
  ``PACK_IMAGES`` images (``PACK_BYTES`` raw bytes) one after another, in one shard file (Zarr's sharding codec,
  inner chunks of ``PACK_CHUNK`` elements, so a read decodes only the chunks its image spans). The pack's attribute
  ``images`` maps each id to ``{"at": offset, "shape", "crc32", "attrs"}``: image ``i`` is
  ``pack[at : at + prod(shape)].reshape(shape)``; ``shard_bytes`` is the shard file's size.

A per-image write builds the new loose array in the hidden sibling ``.<name>.staging/`` and swaps it into place with
one atomic rename, so a reader — in this or another process — sees either the old or the new array, never a torn
one, and a killed writer leaves only staging debris that is cleared on the next open. Every file of the new array
and the folders holding it are fsynced before the rename, so a power cut cannot leave a renamed entry with unwritten
chunks. ``pack`` (one process at a time: the run's orchestrator, under an OS lock on the sibling ``.<name>.packing``) merges the loose entries into
packs: a pack is built and fsynced in staging and renamed into ``_packs/`` (one rename commits all its images), and
only then are its loose entries moved out of the store. Packs are never modified in place (hard links of a reused
run stay valid); a newer pack supersedes an older one's entry of the same id, a loose entry supersedes both, and a
pack none of whose entries is current is deleted. A 100k-image store is then about 200 files instead of 500,000.

A stage's store carries the stage's cache key (``open_for_stage``); every entry (loose array, or pack) is stamped with
the key the store had when it was written, and a writer refuses to swap an entry into a store that was reset under
another key meanwhile, so a store never mixes entries of two configs. ``complete_ids`` lists the entries whose stamp
matches and whose data is on disk (a loose entry's chunk file; a pack's shard file at its recorded size): what a
resumed or verified stage counts as done, found from the pack attributes without opening an image. A packed image's
bytes are checked against their CRC-32 on every read.

>>> import tempfile, numpy as np
>>> s = LabelStore(tempfile.mkdtemp() + "/labels.zarr")
>>> s.write("img1", np.array([[0, 1], [255, 1]], np.uint8))
>>> s.read("img1").tolist(), "img1" in s, s.ids()
([[0, 1], [255, 1]], True, ['img1'])
>>> s.pack(min_loose=1), s.read("img1").tolist(), s.ids(), s.loose_ids()
(1, [[0, 1], [255, 1]], ['img1'], [])
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import threading
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.fsutil import fsync_dir, fsync_tree, replace_dir


class _Zarr:
    """``zarr``, imported at first use: ``inspect`` and the id rule (``image_id_problem``, which the data readers
    import) answer without Zarr's 0.4 s import."""

    def __getattr__(self, name: str) -> Any:
        import zarr as module
        return getattr(module, name)


zarr = _Zarr()

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: names inside a store that belong to Zarr, never to an image
RESERVED_NAMES = frozenset({"zarr.json"})
#: the entry attribute holding the store key the entry was written under
KEY_ATTR = "store_key"
#: the group of packs inside a store (no image id can take it: an id starts with a letter or digit)
PACKS = "_packs"
#: loose entries that make ``pack`` merge them (a store of fewer, e.g. a smoke run's, keeps the loose layout)
PACK_MIN = 256
#: most images in one pack, and most raw bytes (the packer holds one pack in memory)
PACK_IMAGES = 1024
PACK_BYTES = 64 << 20
#: elements of a pack's inner chunk: the unit a read of one image decodes
PACK_CHUNK = 32768
_PACK_RE = re.compile(r"^p(\d{8})\.[0-9a-f]{8}$")


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


class CorruptEntry(RuntimeError):
    """A packed image whose bytes do not match their CRC-32 (the pack file was damaged after it was written)."""


@dataclass(frozen=True)
class PackedEntry:
    """Where one image lies in a pack: ``pack[at : at + prod(shape)].reshape(shape)`` of the pack's dtype."""

    pack: str
    at: int
    shape: tuple[int, ...]
    crc32: int
    attrs: dict
    key: str | None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# per process: each pack's entries (packs are immutable; None: unreadable or its shard is not whole), the current
# index of each store (valid while its set of pack names stays), and the opened pack arrays
_PACK_META: dict[tuple[str, str], dict | None] = {}
_INDEX: dict[str, tuple[frozenset, dict[str, PackedEntry]]] = {}
_ARRAYS: dict[tuple[int, str, str], Any] = {}
_DELETERS: list[threading.Thread] = []  # removing packed loose entries (staging folders) in the background


def _load_pack(packs: Path, name: str, fresh: bool) -> dict | None:
    """A pack's metadata ``{"key", "shard_bytes", "images": {id: {"at", "shape", "crc32", "attrs"}}}`` (None: it is
    unreadable or its shard file is missing or not of the recorded size). ``fresh``: stat the shard file again, even
    for a pack read before."""
    cache = (str(packs), name)
    if cache in _PACK_META and not fresh:
        return _PACK_META[cache]
    meta = _PACK_META.get(cache)
    if meta is None:
        attrs = (_read_json(packs / name / "zarr.json") or {}).get("attributes", {})
        if "images" not in attrs:
            _PACK_META[cache] = None
            return None
        meta = {"key": attrs.get(KEY_ATTR), "shard_bytes": attrs.get("shard_bytes"), "images": attrs["images"]}
    try:
        whole = os.stat(packs / name / "c" / "0").st_size == meta["shard_bytes"]
    except OSError:
        whole = False
    _PACK_META[cache] = meta if whole else None
    return _PACK_META[cache]


class LabelStore:
    """Zarr v3 store of per-image arrays with atomic, resumable writes and packs (module docstring)."""

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(self.path), mode="a", zarr_format=3)
        self._staging = self.path.parent / f".{self.path.name}.staging"
        self._packs = self.path / PACKS
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
        raw = _read_json(self.path / "zarr.json")  # the group's metadata as JSON: no Zarr round trip per write
        return (raw or {}).get("attributes", {}).get("key")

    def loose_ids(self) -> list[str]:
        """The ids stored as loose arrays (``<path>/<id>/``), sorted."""
        return sorted(p.name for p in self.path.iterdir()
                      if p.name[0] not in "._" and p.name not in RESERVED_NAMES and (p / "zarr.json").is_file())

    def packed(self, fresh: bool = False) -> dict[str, str]:
        """The packed images of the whole packs: id -> the newest pack holding it. Cached in this process while the
        set of packs stays; ``fresh``: stat every pack's shard file again (what a resume check does)."""
        try:
            names = frozenset(n for n in os.listdir(self._packs) if _PACK_RE.match(n))
        except FileNotFoundError:
            names = frozenset()
        cached = _INDEX.get(str(self.path))
        if cached is not None and cached[0] == names and not fresh:
            return cached[1]
        index: dict[str, str] = {}
        for name in sorted(names):  # oldest first: a newer pack's entry replaces an older one's
            meta = _load_pack(self._packs, name, fresh)
            if meta is not None:
                index.update(dict.fromkeys(meta["images"], name))
        _INDEX[str(self.path)] = (names, index)
        return index

    def packed_entry(self, image_id: str) -> PackedEntry | None:
        """Where ``image_id`` lies in its pack (None: it is not packed)."""
        name = self.packed().get(image_id)
        meta = None if name is None else _PACK_META.get((str(self._packs), name))
        if meta is None:
            return None
        e = meta["images"][image_id]
        return PackedEntry(name, e["at"], tuple(e["shape"]), e["crc32"], e.get("attrs", {}), meta["key"])

    def ids(self) -> list[str]:
        """Image ids stored (loose or packed), sorted."""
        return sorted(set(self.loose_ids()) | set(self.packed()))

    def complete_ids(self) -> list[str]:
        """The stored ids whose entry was written under the store's current key and whose data is on disk, sorted:
        a loose entry whose chunk was deleted (it would read as zeros), an image of a pack whose shard file is gone
        or truncated, or an entry that another config wrote, is not among them. Reads the loose entries' metadata
        and each pack's attributes (cached) and shard size: no image is opened."""
        key = self.key
        packs = str(self._packs)
        done = {i for i, name in self.packed(fresh=True).items()
                if key is None or (_PACK_META.get((packs, name)) or {}).get("key") == key}
        done.update(i for i in self.loose_ids() if self._complete_meta(i, key) is not None)
        return sorted(done)

    def _loose_meta(self, image_id: str) -> dict | None:
        """A loose entry's metadata if its chunk file is on disk (None: no whole loose entry)."""
        entry = self.path / image_id
        meta = _read_json(entry / "zarr.json")
        if meta is None:
            return None
        shape = meta.get("shape", ())
        if 0 in shape:  # an empty array (e.g. the 0×H×W maps of an image without classes) has no chunk to write
            return meta
        return meta if (entry / "c").joinpath(*["0"] * len(shape)).is_file() else None  # the single chunk

    def _complete_meta(self, image_id: str, key: str | None) -> dict | None:
        """A loose entry's metadata if it is whole and was written under ``key`` (None: not a complete entry)."""
        meta = self._loose_meta(image_id)
        return meta if meta is not None and (key is None or meta.get("attributes", {}).get(KEY_ATTR) == key) else None

    def __contains__(self, image_id: str) -> bool:
        return image_id_problem(image_id) is None and ((self.path / image_id / "zarr.json").is_file()
                                                       or image_id in self.packed())

    def __len__(self) -> int:
        return len(self.ids())

    def write(self, image_id: str, array: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Store ``array`` for ``image_id`` atomically as a loose entry (replacing any earlier array, loose or packed),
        stamped with the store's key.

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
        self._refuse_if_reset(tmp, repr(image_id), self._writer_key)
        replace_dir(tmp, self.path / image_id)
        fsync_dir(self.path)

    def _refuse_if_reset(self, tmp: Path, what: str, key: str | None) -> None:
        if self.key != key:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"label store {self.path} was reset under another config while this process wrote "
                               f"{what}: two runs write one run folder")

    def _resolve(self, image_id: str) -> tuple[str, Any]:
        """``("loose", metadata)`` or ``("packed", PackedEntry)`` of a stored id, else ``KeyError``."""
        problem = image_id_problem(image_id)
        if problem:
            raise KeyError(f"{problem}: not read from the store {self.path}")
        meta = self._loose_meta(image_id)
        if meta is not None:
            return "loose", meta
        entry = self.packed_entry(image_id)
        if entry is not None:
            return "packed", entry
        if (self.path / image_id / "zarr.json").is_file():
            raise KeyError(f"{image_id!r} is not whole in the store {self.path} (its chunk is missing): run its stage "
                           "again to redo it")
        raise KeyError(f"{image_id!r} is not in the store {self.path}")

    def _pack_array(self, name: str):
        k = (os.getpid(), str(self.path), name)  # a forked worker opens its own
        if k not in _ARRAYS:
            _ARRAYS[k] = zarr.open_array(str(self._packs / name), mode="r", zarr_format=3)
        return _ARRAYS[k]

    def _read_packed(self, image_id: str, e: PackedEntry) -> np.ndarray:
        n = math.prod(e.shape)
        flat = self._pack_array(e.pack)[e.at:e.at + n]
        if zlib.crc32(np.ascontiguousarray(flat).view(np.uint8)) != e.crc32:
            raise CorruptEntry(f"label store {self.path}: {image_id!r} in {PACKS}/{e.pack} does not match its checksum "
                               f"(the pack was damaged): delete {self._packs / e.pack} and run its stage again to redo "
                               "its images")
        return np.asarray(flat).reshape(e.shape)

    def read(self, image_id: str) -> np.ndarray:
        for attempt in range(3):  # a loose entry moved into a pack (or a pack superseded) between look-up and read
            form, where = self._resolve(image_id)
            try:
                if form == "packed":
                    return self._read_packed(image_id, where)
                entry = self.path / image_id
                before = os.stat(entry).st_ino
                a = zarr.open_array(str(entry), mode="r", zarr_format=3)[...]
                if os.stat(entry).st_ino == before and (entry / "zarr.json").is_file():
                    return a
            except (FileNotFoundError, KeyError) as e:
                if attempt == 2:
                    raise KeyError(f"{image_id!r} vanished from the store {self.path} while read ({e})") from None
            _INDEX.pop(str(self.path), None)
        raise KeyError(f"{image_id!r} kept moving in the store {self.path} while read")

    def read_attrs(self, image_id: str) -> dict[str, Any]:
        form, where = self._resolve(image_id)
        attrs = dict(where.get("attributes", {})) if form == "loose" else dict(where.attrs)
        attrs.pop(KEY_ATTR, None)
        return attrs

    # packs ------------------------------------------------------------------------------------
    def pack(self, min_loose: int | None = PACK_MIN) -> int:
        """Merge the loose entries complete under the store's key into packs, if there are at least ``min_loose``
        of them (module docstring); returns how many were packed (0: too few, or another process is packing).
        ``min_loose=None`` (a stage's end): ``PACK_MIN``, or any number once the store has packs (a large store
        ends without loose entries, a small one stays loose).

        Safe beside writers of other images (an entry rewritten while it is packed stays loose and supersedes the
        packed copy) and readers (an image is always either loose or in a committed pack). A crash at any point
        leaves every image readable: a pack is committed by one rename, its loose entries are removed after it.
        """
        if min_loose is None:
            min_loose = 1 if self.packed() else PACK_MIN
        if len(self._packable()) < max(1, min_loose):
            return 0  # (nothing is created: a small store keeps the loose layout)
        with self._packing() as key:
            if key is False:
                return 0
            loose = self._packable()  # again, under the lock
            for batch in _batches([(i, m["data_type"], math.prod(m.get("shape", ())), m) for i, m in loose]):
                items, inodes = [], {}
                for i, m in batch:
                    inodes[i] = os.stat(self.path / i).st_ino
                    a = zarr.open_array(str(self.path / i), mode="r", zarr_format=3)[...]
                    items.append((i, a, {k: v for k, v in m.get("attributes", {}).items() if k != KEY_ATTR}))
                self._commit_pack(items, key)
                self._remove_loose(inodes)
            self._drop_superseded()
            return len(loose)

    def write_many(self, items: list[tuple[str, np.ndarray, dict[str, Any] | None]]) -> None:
        """Store many images at once straight into packs (a writer that holds a batch: no loose entry on the way),
        each pack committed atomically as in ``pack``; an earlier loose entry of an id is replaced. Refused, like
        ``write``, when the store was reset under another key meanwhile."""
        arrays = [(check_image_id(i), np.ascontiguousarray(a), dict(attrs or {})) for i, a, attrs in items]
        with self._packing(wait=True) as key:
            for batch in _batches([(i, str(a.dtype), a.size, (a, attrs)) for i, a, attrs in arrays]):
                self._commit_pack([(i, a, attrs) for i, (a, attrs) in batch], key)
                self._remove_loose({i: None for i, _ in batch})
            self._drop_superseded()

    def _packable(self) -> list[tuple[str, dict]]:
        """The loose entries complete under the store's key, with their metadata."""
        key = self.key
        return [(i, m) for i in self.loose_ids() if (m := self._complete_meta(i, key)) is not None]

    @contextmanager
    def _packing(self, wait: bool = False):
        """Hold the store's packing lock (``False`` when another process holds it and ``wait`` is off), yielding the
        store's key."""
        if not (self._packs / "zarr.json").is_file():
            zarr.open_group(str(self._packs), mode="a", zarr_format=3)  # a group: Zarr readers find the packs
        lock = os.open(self.path.parent / f".{self.path.name}.packing", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield self.key
        finally:
            os.close(lock)

    def _commit_pack(self, items: list[tuple[str, np.ndarray, dict]], key: str | None) -> None:
        """Write ``items`` (one dtype) as one pack: built and fsynced in staging, renamed into ``_packs/``."""
        dtype = items[0][1].dtype
        total = sum(a.size for _, a, _ in items)
        flat = np.zeros(max(1, -(-total // PACK_CHUNK)) * PACK_CHUNK, dtype)
        images, at = {}, 0
        for i, a, attrs in items:
            a = np.ascontiguousarray(a, dtype)
            flat[at:at + a.size] = a.reshape(-1)
            images[i] = {"at": at, "shape": list(a.shape), "crc32": zlib.crc32(a.reshape(-1).view(np.uint8)),
                         "attrs": attrs}
            at += a.size
        seq = max((int(m.group(1)) for n in os.listdir(self._packs) if (m := _PACK_RE.match(n))), default=0) + 1
        name = f"p{seq:08d}.{uuid.uuid4().hex[:8]}"
        self._staging.mkdir(exist_ok=True)
        tmp = self._staging / f"{PACKS}.{name}"
        stamp = {KEY_ATTR: key} if key is not None else {}
        arr = zarr.create_array(store=str(tmp), shape=flat.shape, dtype=dtype, chunks=(PACK_CHUNK,),
                                shards=flat.shape, zarr_format=3, config={"write_empty_chunks": True})
        arr[...] = flat
        with zarr.config.set({"json_indent": None}):  # compact: a resume check parses every pack's metadata
            arr.update_attributes({"images": images, "shard_bytes": os.stat(tmp / "c" / "0").st_size, **stamp})
        fsync_tree(tmp)
        self._refuse_if_reset(tmp, f"a pack of {len(items)} images", key)
        os.rename(tmp, self._packs / name)  # the commit of every image in it
        fsync_dir(self._packs)

    def _remove_loose(self, inodes: dict[str, int | None]) -> None:
        """Move the loose entries of these ids out of the store (each only if its folder is still the inode given,
        i.e. not rewritten since; None: whatever it is), then delete them."""
        trash = self._staging / f"packed.{uuid.uuid4().hex}"
        trash.mkdir(parents=True)
        for i, ino in inodes.items():
            entry = self.path / i
            try:
                if ino is None or os.stat(entry).st_ino == ino:
                    os.rename(entry, trash / i)
            except FileNotFoundError:
                pass
        fsync_dir(self.path)
        # out of the store already: deleted beside the next images (a stage's end waits, ``pack_stores``)
        deleter = threading.Thread(target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True)
        deleter.start()
        _DELETERS.append(deleter)

    def _drop_superseded(self) -> None:
        """Delete the packs none of whose images is current (superseded by newer packs, or unreadable)."""
        live = set(self.packed(fresh=True).values())
        for n in os.listdir(self._packs):
            if _PACK_RE.match(n) and n not in live:
                shutil.rmtree(self._packs / n, ignore_errors=True)
                _PACK_META.pop((str(self._packs), n), None)

    def files(self) -> int:
        """Files on disk under the store (folders not counted)."""
        return sum(len(f) for _, _, f in os.walk(self.path))

    def clear_staging(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def reset(self, attrs: dict[str, Any] | None = None) -> None:
        """Remove every array and pack and set fresh attributes (used when a stage's config changed)."""
        self.clear_staging()
        for p in self.path.iterdir():
            if p.name != "zarr.json":
                shutil.rmtree(p) if p.is_dir() else os.remove(p)
        _INDEX.pop(str(self.path), None)
        g = zarr.open_group(str(self.path), mode="a", zarr_format=3)
        for k in list(g.attrs.keys()):
            del g.attrs[k]
        if attrs:
            g.attrs.update(attrs)


def _batches(items: list[tuple[str, str, int, Any]]) -> list[list[tuple[str, Any]]]:
    """``(id, dtype, elements, payload)`` in pack-sized groups of one dtype (at most ``PACK_IMAGES`` images and
    ``PACK_BYTES`` raw bytes), as ``(id, payload)``."""
    by_dtype: dict[str, list[tuple[str, int, Any]]] = {}
    for i, dtype, n, payload in items:
        by_dtype.setdefault(str(dtype), []).append((i, n, payload))
    out = []
    for dtype, group in by_dtype.items():
        itemsize = np.dtype(dtype).itemsize
        cur, nbytes = [], 0
        for i, n, payload in group:
            if cur and (len(cur) >= PACK_IMAGES or nbytes + n * itemsize > PACK_BYTES):
                out.append(cur)
                cur, nbytes = [], 0
            cur.append((i, payload))
            nbytes += n * itemsize
        if cur:
            out.append(cur)
    return out


def pack_stores(paths: list[Path], min_loose: int | None = PACK_MIN) -> int:
    """``LabelStore.pack`` on every label store among ``paths`` (others skipped); returns the images packed. At a
    stage's end (``min_loose=None``) it also waits until the packed loose entries are deleted."""
    n = sum(LabelStore(p).pack(min_loose) for p in paths if (Path(p) / "zarr.json").is_file())
    if min_loose is None:
        while _DELETERS:
            _DELETERS.pop().join()
    return n


def open_for_stage(path: Path, key: str, attrs: dict[str, Any]) -> LabelStore:
    """A store for a stage with config digest ``key``: kept (to resume) if its key matches, else emptied."""
    store = LabelStore(path)
    store.clear_staging()
    if store.attrs.get("key") != key:
        store.reset({**attrs, "key": key})
    return store
