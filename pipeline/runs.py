"""Run folders, stage records and caching.

A run folder holds ``config.yaml`` (the resolved config), ``run.json`` (flow, profile, command, schema) and one
folder per stage, ``stages/<name>/``, with the stage's outputs and its ``record.json``: status, key, seconds,
metrics, and what its outputs were when it completed. A stage's *key* digests its code, the config keys it reads,
the keys of the stages it reads and the fingerprint of the data it reads (every split image's, mask's and
annotation's size and modification time, or their contents with ``data.fingerprint=content``; the sparse
annotation files for the stages that read them). A stage whose record is complete with the same key, and whose
outputs are still as the record lists them, is not run again (status ``cached``); one whose outputs lost an entry or
a file is run again, and a per-image stage then redoes only the missing images. A record becomes ``completed``
only after the stage's outputs are fully written, and every record is written atomically.

One flow at a time writes a run folder: ``RunLock`` holds an OS lock on ``<run>/.lock`` for the flow's life (the
OS releases it when the process dies), and a second ``run-flow`` on the folder is refused, naming the holder.
A folder that is not empty and holds no ``run.json`` is not a run folder and is never written into.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfigBase, validate_config
from pipeline.errors import UserError
from pipeline import records
from pipeline.fsutil import atomic_write_text, replace_dir
from pipeline.progress import PROGRESS_FILE
from pipeline.records import RECORD_SCHEMA, RUN_SCHEMA, read_json_file
from pipeline.sparse import sparse_sources
from pipeline.stage import Stage, StageContext, masks_as_declared, stage_key
from pipeline.store import LabelStore, pack_stores
from pipeline.synthetic import embedded_dataset
from pipeline.voc import VOCDataset, VOCFolder, find_voc_root

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive OS lock on a run folder (``fcntl.flock`` on ``<run>/.lock``), held until ``release`` or the
    process's end; the file names the holder's pid. Refused with one line when another process holds it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise UserError(f"run folder {self.path.parent} is in use by another run-flow (pid {holder}): wait for it "
                            "to finish or give this run another --run-dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Run:
    """A run folder and its resolved config."""

    def __init__(self, run_dir: str | Path, config: RunConfigBase) -> None:
        self.dir = Path(run_dir)
        self.config = config

    @classmethod
    def create(cls, run_dir: str | Path, config: RunConfigBase, command: str | None = None) -> "Run":
        """Check the folder (``check_folder``), then write its config and ``run.json``."""
        run = cls(run_dir, config)
        run.check_folder()
        run.write_description(command)
        return run

    def check_folder(self) -> None:
        """Refuse, writing nothing, a folder this run must not write: a file, a folder that is not empty and holds
        no ``run.json`` (not a run folder), or a run folder of a newer layout. (A run folder of another flow is
        accepted: a multi-stage flow reuses its single-stage flow's stages there.)"""
        d = self.dir
        if d.exists() and not d.is_dir():
            raise UserError(f"--run-dir {d} is a file: give a folder")
        if not d.is_dir() or not any(p.name != LOCK_FILE for p in d.iterdir()):
            return
        if not (d / "run.json").is_file():
            raise UserError(f"{d} is not empty and is not a run folder (no run.json): give --run-dir a new or empty "
                            "folder, or the folder of an earlier run-flow")
        read_json_file(d / "run.json", "run description", RUN_SCHEMA)

    def write_description(self, command: str | None = None, stages: list[Stage] | None = None,
                          provenance: dict | None = None) -> None:
        """Write ``config.yaml`` and ``run.json`` (schema, flow, profile, the command line that made it, the flow's
        stages for ``inspect``, and ``provenance``: what reproduces the run)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", self.config.to_yaml())
        desc = {"schema": RUN_SCHEMA, "flow": self.config.flow, "profile": self.config.profile, "command": command,
                "updated": time.time(),
                # which masks the labelling read (null: none; inspect's summary.calibration)
                "calibration": calibration_summary(self.config, self.dataset)}
        if stages is not None:
            desc["stages"] = stage_entries(stages)
        atomic_write_text(self.dir / "run.json", json.dumps({**desc, **(provenance or {})}, indent=1))

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        d = Path(run_dir)
        if not (d / "config.yaml").is_file():
            raise UserError(f"{d} is not a run folder (no config.yaml): give the --run-dir of a run-flow call")
        if (d / "run.json").is_file():
            read_json_file(d / "run.json", "run description", RUN_SCHEMA)  # refuses a newer layout or a corrupt file
        try:
            raw = yaml.safe_load((d / "config.yaml").read_text())
        except yaml.YAMLError as e:
            raise UserError(f"{d / 'config.yaml'} is not valid YAML ({type(e).__name__}): run the flow in a new --run-dir") from None
        if isinstance(raw, dict) and "workers" in (raw.get("pseudo") or {}):  # before the workers section
            raw.setdefault("workers", {})["processes"] = raw["pseudo"].pop("workers")
        try:
            config = validate_config(raw)
        except UserError as e:
            raise UserError(f"{d / 'config.yaml'}: {e} (a run folder of an older version or another project: "
                            "run the flow in a new --run-dir)") from None
        return cls(d, config)

    # data ---------------------------------------------------------------------------------------
    @cached_property
    def voc_root(self) -> Path:
        d = self.config.data
        if d.root is None:
            s = d.synthetic
            return embedded_dataset(s.train, s.val, s.seed, s.min_size, s.max_size, s.style, d.dataset or "voc")
        return find_voc_root(Path(d.root).resolve(), d.dataset)  # absolute: per-image workers may run in another directory

    def dataset(self, split: str) -> VOCDataset:
        return VOCDataset(self.voc_root, split, self.config.data.max_images)

    def splits(self) -> list[str]:
        """Every split the run's stages may read."""
        d = self.config.data
        cal = self.config.pseudo.calibrate
        return sorted({d.train_split, d.label_split, d.val_split, d.score_split or d.label_split,
                       self.config.segmentation.eval_split, *([cal.split] if cal is not None else [])})

    @cached_property
    def data_fingerprint(self) -> str:
        """The identity of the data every data-reading stage's key includes: the VOC folder, its split lists, and
        each listed image's image, masks and annotation (size and modification time, or contents with
        ``data.fingerprint=content``)."""
        h = hashlib.sha256(str(self.voc_root.resolve()).encode())
        folder = VOCFolder(self.voc_root)  # the reader of the root's layout (VOC, COCO)
        ids: set[str] = set()
        for split in self.splits():
            text, split_ids = folder.split_identity(split)  # VOC: the split list's bytes; COCO: its instances file
            h.update(text)
            ids.update(split_ids)
        marker = self.voc_root / "synthetic.json"
        if marker.is_file():
            h.update(marker.read_bytes())
        files = [f for i in sorted(ids) for f in folder.files_of(i)]
        h.update(files_fingerprint(files, self.config.data.fingerprint).encode())
        return h.hexdigest()[:16]

    @cached_property
    def sparse_fingerprint(self) -> str:
        """The identity of the sparse annotation files (``data.sparse``), for the stages that read them."""
        s = self.config.data.sparse
        try:
            paths = sparse_sources(s.paths, s.kind, self.config.data.root, self.voc_root)
        except UserError:
            return "none"  # the stage that reads them says what is missing
        files = [f for p in paths for f in (sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])]
        return files_fingerprint(files, self.config.data.fingerprint)

    # stages -------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.dir / "stages" / name

    def read_record(self, name: str) -> dict | None:
        return records.read_record(self.dir, name)

    def write_record(self, name: str, record: dict) -> None:
        atomic_write_text(self.stage_dir(name) / "record.json", json.dumps({"schema": RECORD_SCHEMA, **record}, indent=1))

    def flow_name(self) -> str:
        p = self.dir / "run.json"
        return read_json_file(p, "run description", RUN_SCHEMA).get("flow", self.config.flow) if p.is_file() else self.config.flow


VALIDATED_FILE = "validated.json"


def calibration_images(config, dataset) -> list[str] | None:
    """The images whose masks may choose the labelling's thresholds and route (``pseudo.calibrate``): those of the
    calibration split that get labels (``data.label_split``) and have a mask; None without calibration. ``config`` and
    ``dataset(split)`` are a run's or a stage context's (a stage must declare ``pseudo.calibrate`` and
    ``data.label_split`` among its reads)."""
    cal = config.pseudo.calibrate
    if cal is None:
        return None
    labelled = set(dataset(config.data.label_split).ids)
    ds = dataset(cal.split)
    return [i for i in ds.ids if i in labelled and ds.has_mask(i)]


def calibration_summary(config, dataset) -> dict | None:
    """``{"split": NAME, "images": N}`` of a calibrated run (``inspect --json``'s ``summary.calibration``), else None."""
    ids = calibration_images(config, dataset)
    return None if ids is None else {"split": config.pseudo.calibrate.split, "images": len(ids)}


def check_calibration(run: Run) -> None:
    """Refuse, before any stage, with one line: a calibration split (``pseudo.calibrate.split``) without a split list,
    without a labelled image that has a mask, overlapping the scored split (``data.score_split``), or holding every
    scored image (nothing would be left to score)."""
    cfg = run.config
    cal = cfg.pseudo.calibrate
    if cal is None:
        return
    try:
        run.dataset(cal.split)
    except UserError as e:
        raise UserError(f"pseudo.calibrate.split={cal.split} is not a split of the data ({e}): name a split list of "
                        "calibration images, or remove pseudo.calibrate") from None
    ids = calibration_images(cfg, run.dataset)
    if not ids:
        raise UserError(f"pseudo.calibrate.split={cal.split} has no image with a mask among the {cfg.data.label_split} "
                        "images that get labels: add their masks or choose a split of labelled images with masks")
    chosen = set(ids)
    d = cfg.data
    if d.score_split is not None:
        both = [i for i in run.dataset(d.score_split).ids if i in chosen]
        if both:
            raise UserError(f"pseudo.calibrate.split={cal.split} and data.score_split={d.score_split} share {len(both)} "
                            f"images (e.g. {both[0]}): calibration images are never scored; choose disjoint splits")
    else:
        ds = run.dataset(d.label_split)
        if not any(ds.has_mask(i) for i in ds.ids if i not in chosen):
            raise UserError(f"pseudo.calibrate.split={cal.split} holds every {d.label_split} image with a mask: nothing "
                            "is left to score; calibrate on fewer images")


def validate_data(run: Run, stages: list[Stage]) -> None:
    """Check, before any stage, every image and mask the run's splits list (``UserError``: one line naming the
    file and the fix): each image decodes whole, is 8-bit and within ``data.max_pixels``; each mask has its image's
    size and only VOC label values; the training split has image-level labels; the splits that stages score on
    (``segmentation.eval_split``, ``data.score_split``) have masks. A run folder remembers the data it checked
    (``validated.json``: the data's fingerprint and the cap), so a resumed run checks again only what changed."""
    cfg = run.config
    check_calibration(run)
    stamp = {"data": run.data_fingerprint, "max_pixels": cfg.data.max_pixels}
    done = run.dir / VALIDATED_FILE
    if done.is_file():
        try:
            if json.loads(done.read_text()) == stamp:
                return
        except ValueError:
            pass
    datasets = {split: run.dataset(split) for split in run.splits()}
    folder = VOCFolder(run.voc_root)
    ids = sorted({i for ds in datasets.values() for i in ds.ids})

    def check(image_id: str) -> bool:
        return folder.check_mask(image_id, folder.check_image(image_id, cfg.data.max_pixels))

    from concurrent.futures import ThreadPoolExecutor  # PIL decodes without the GIL
    with ThreadPoolExecutor(max(1, cfg.workers.processes)) as pool:
        has_mask = dict(zip(ids, pool.map(check, ids)))
    _ = datasets[cfg.data.train_split].label_matrix  # every training image needs image-level labels
    reads = {k for st in stages for k in st.reads}
    scored = {"segmentation.eval_split": cfg.segmentation.eval_split, "data.score_split": cfg.data.score_split}
    for key, split in scored.items():
        if split is not None and key in reads and not any(has_mask[i] for i in datasets[split].ids):
            raise UserError(f"split {split!r} ({key}) has no image with a mask in SegmentationClass/ or "
                            f"SegmentationClassAug/, so nothing can be scored on it: add its masks or choose "
                            f"another split with --set {key}=NAME")
    atomic_write_text(done, json.dumps(stamp))


def files_fingerprint(files: list[Path], mode: str = "stat") -> str:
    """A digest of ``files`` (in order): each one's name with its size and modification time (``stat``) or its
    bytes (``content``); a missing file counts as missing.

    >>> import tempfile, pathlib; p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_text("x")
    >>> files_fingerprint([p], "content") == files_fingerprint([p], "content"), len(files_fingerprint([p]))
    (True, 16)
    """
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
        try:
            st = os.stat(f)
        except FileNotFoundError:
            h.update(b"missing")
            continue
        h.update(_content_digest(str(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) if mode == "content"
                 else f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1 << 16)
def _content_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bytes:
    """The bytes' digest of a file, kept for this process while its size, times and inode stay (each stage of a
    flow opens the run again; any write changes the status-change time, which no tool sets back)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _reads_sparse(stage: Stage) -> bool:
    return any(k in ("data", "data.sparse") or k.startswith("data.sparse.") for k in stage.reads)


def key_of(run: Run, stage: Stage) -> str:
    """``stage``'s cache key in this run (``pipeline.stage.stage_key``): the data's fingerprint for a stage that
    reads the data (or follows one that does), with the sparse files' for one that reads ``data.sparse``."""
    chain = [stage, *stage.upstream()]
    data_id = None
    if any(s.reads_data for s in chain):
        data_id = run.data_fingerprint
        if any(_reads_sparse(s) for s in chain):
            data_id += ":" + run.sparse_fingerprint
    return stage_key(stage, run.config.model_dump(mode="json"), data_id)


def outputs_of(run: Run, stage: Stage) -> dict[str, dict]:
    """What ``stage``'s declared outputs hold now: a label store's complete entries (count and digest of the ids),
    a file's size. The record keeps this; a cache hit compares it with the disk (``outputs_changed``)."""
    out = {}
    for name in stage.writes:
        p = run.stage_dir(stage.name) / name
        if (p / "zarr.json").is_file():
            ids = LabelStore(p).complete_ids()
            out[name] = {"entries": len(ids), "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}
        elif p.is_file():
            out[name] = {"bytes": p.stat().st_size}
    return out


def outputs_changed(run: Run, stage: Stage, record: dict) -> str | None:
    """Why the outputs on disk differ from those ``record`` lists (None: they do not): a deleted file, a store
    that lost an entry or a chunk."""
    listed = record.get("outputs")
    if listed is None:
        return None  # a record from before outputs were listed
    now = outputs_of(run, stage)
    for name, want in listed.items():
        have = now.get(name)
        if have is None:
            return f"{name} is missing"
        if have != want:
            if "entries" in want:
                return f"{name} holds {have.get('entries')} complete entries, {want['entries']} when it completed"
            return f"{name} changed size"
    return None


def plan_stages(stages: list[Stage], config: dict, until: str | None = None,
                force: tuple[str, ...] = ()) -> tuple[list[Stage], set[str]]:
    """The stages a run-flow call runs (``stages`` up to ``until``, inclusive) and those it reruns whatever their
    records say: the ``force`` stages and every stage that depends on one (under ``config``, a JSON dump)."""
    names = [st.name for st in stages]
    for name in [until, *force]:
        if name is not None and name not in names:
            raise UserError(f"the flow has no stage {name!r}: choose one of {', '.join(names)}")
    todo = stages[: names.index(until) + 1] if until else list(stages)
    forced = set(force) | {st.name for st in stages if any(u.name in force for u in st.upstream(config))}
    return todo, forced


def stale_stages(run: Run, stages: list[Stage]) -> list[str]:
    """The stages whose record completed under another key (config, code, data or inputs changed): the run will
    recompute them and replace their outputs."""
    out = []
    for st in stages:
        rec = run.read_record(st.name)
        if rec and rec.get("status") in ("completed", "cached") and rec.get("key") != key_of(run, st):
            out.append(st.name)
    return out


def reuse_stages(run: Run, source_dir: str | Path, stages: list[Stage]) -> list[str]:
    """Bring into ``run`` every stage of ``stages`` that the run in ``source_dir`` completed under the key ``run``
    gives it (outputs verified), and that ``run`` has not: label-store chunks are hard-linked (the stores replace
    files by renaming, never in place), everything else copied. Returns the names brought; they report ``cached``."""
    source = Run.open(source_dir)
    if source.dir.resolve() == run.dir.resolve():
        raise UserError(f"--reuse {source_dir} is this run's own folder: give the folder of another run")
    brought = []
    for st in stages:
        key = key_of(run, st)
        mine = run.read_record(st.name)
        if mine and mine.get("status") in ("completed", "cached") and mine.get("key") == key:
            continue
        rec = source.read_record(st.name)
        if not rec or rec.get("status") not in ("completed", "cached") or rec.get("key") != key:
            continue
        if outputs_changed(source, st, rec) is not None:
            continue
        dst = run.stage_dir(st.name)
        tmp = dst.with_name(f".{dst.name}.reuse")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source.stage_dir(st.name), tmp, copy_function=_link_or_copy)
        dst.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, dst)
        brought.append(st.name)
    return brought


def _link_or_copy(src: str, dst: str) -> None:
    if ".zarr" + os.sep in src:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def run_stage(run: Run, stage: Stage, force: bool = False) -> dict:
    """Run ``stage`` unless its record is complete with the same key (and ``force`` is off); returns the record.
    A forced stage starts afresh: its label stores are emptied first.

    Every stage its inputs come from must have completed under the key this config gives it.
    """
    stage.check_wired()
    for up in {o.stage.name: o.stage for o in stage.used_sources(run.config.model_dump(mode="json")).values()}.values():
        rec = run.read_record(up.name)
        if rec is None or rec.get("status") not in ("completed", "cached") or rec.get("key") != key_of(run, up):
            raise RuntimeError(f"stage {stage.name} needs {up.name}, which has not completed with this config")
    key = key_of(run, stage)
    rec = run.read_record(stage.name)
    if force:
        for name in stage.writes:
            if (run.stage_dir(stage.name) / name / "zarr.json").is_file():
                LabelStore(run.stage_dir(stage.name) / name).reset()
    elif rec and rec.get("status") in ("completed", "cached") and rec.get("key") == key:
        changed = outputs_changed(run, stage, rec)
        if changed is None:
            rec = {**rec, "status": "cached"}
            run.write_record(stage.name, rec)
            return rec
        log.warning("stage %s: %s; running it again (what is stored under this key is kept)", stage.name, changed)
    run.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
    started = time.time()
    base = {"name": stage.name, "key": key, "started": started, "pid": os.getpid()}
    run.write_record(stage.name, {**base, "status": "running", "seconds": None, "metrics": {}})
    try:
        with masks_as_declared(run, stage):  # a labelling stage reads no mask of a labelled image (Stage.masks)
            metrics = stage.fn(StageContext(run, stage, key)) or {}
        pack_stores([run.stage_dir(stage.name) / name for name in stage.writes], min_loose=None)  # a large store ends packed
    except BaseException as e:
        run.write_record(stage.name, {**base, "status": "failed", "seconds": round(time.time() - started, 3),
                                      "metrics": {}, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(limit=20)})
        raise
    rec = {**base, "status": "completed", "seconds": round(time.time() - started, 3), "metrics": metrics,
           "outputs": outputs_of(run, stage)}
    run.write_record(stage.name, rec)
    (run.stage_dir(stage.name) / PROGRESS_FILE).unlink(missing_ok=True)
    return rec


def stage_entries(stages: list[Stage]) -> list[dict]:
    """A flow's stages as ``run.json`` lists them (what ``inspect`` needs without importing the flows)."""
    return [{"name": st.name, "summary": dict(st.summary)} for st in stages]


def summarise(run: Run, stages: list[Stage]) -> dict[str, Any]:
    """The ``inspect --json`` object of ``run`` (``pipeline.records.summarise``)."""
    return records.summarise(run.dir, run.flow_name(), stage_entries(stages))
