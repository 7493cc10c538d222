"""Run folders, stage records and caching.

A run folder holds ``config.yaml`` (the resolved config), ``run.json`` (flow, profile) and one
folder per stage, ``stages/<name>/``, with the stage's outputs and its ``record.json``:
status, key, seconds, metrics. A stage's *key* digests its config sections, the keys of the
stages it reads and the data's fingerprint; a stage whose record is complete with the same key
is not run again (status ``cached``). A record becomes ``completed`` only after the stage's
outputs are fully written, and every record is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfigBase, validate_config
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.stage import Stage, StageContext, stage_key
from pipeline.synthetic import embedded_dataset
from pipeline.voc import VOCDataset, find_voc_root

STATUSES = ("completed", "cached", "failed", "pending")


class Run:
    """A run folder and its resolved config."""

    def __init__(self, run_dir: str | Path, config: RunConfigBase) -> None:
        self.dir = Path(run_dir)
        self.config = config

    @classmethod
    def create(cls, run_dir: str | Path, config: RunConfigBase, command: str | None = None) -> "Run":
        """Write the folder's config and ``run.json`` (flow, profile, the command line that made it)."""
        run = cls(run_dir, config)
        run.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.dir / "config.yaml", config.to_yaml())
        atomic_write_text(run.dir / "run.json", json.dumps({"flow": config.flow, "profile": config.profile,
                                                           "command": command, "updated": time.time()}))
        return run

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        d = Path(run_dir)
        if not (d / "config.yaml").is_file():
            raise UserError(f"{d} is not a run folder (no config.yaml): give the --run-dir of a run-flow call")
        raw = yaml.safe_load((d / "config.yaml").read_text())
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
            return embedded_dataset(s.train, s.val, s.seed, s.min_size, s.max_size, s.style)
        return find_voc_root(Path(d.root).resolve())  # absolute: per-image workers may run in another directory

    def dataset(self, split: str) -> VOCDataset:
        return VOCDataset(self.voc_root, split, self.config.data.max_images)

    @cached_property
    def data_fingerprint(self) -> str:
        h = hashlib.sha256(str(self.voc_root.resolve()).encode())
        lists = self.voc_root / "ImageSets" / "Segmentation"
        d = self.config.data
        for split in sorted({d.train_split, d.label_split, d.val_split, d.score_split or d.label_split,
                             self.config.segmentation.eval_split}):
            p = lists / f"{split}.txt"
            h.update(p.read_bytes() if p.is_file() else b"")
        marker = self.voc_root / "synthetic.json"
        if marker.is_file():
            h.update(marker.read_bytes())
        return h.hexdigest()[:16]

    # stages -------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.dir / "stages" / name

    def read_record(self, name: str) -> dict | None:
        p = self.stage_dir(name) / "record.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def write_record(self, name: str, record: dict) -> None:
        atomic_write_text(self.stage_dir(name) / "record.json", json.dumps(record, indent=1))

    def flow_name(self) -> str:
        p = self.dir / "run.json"
        return json.loads(p.read_text())["flow"] if p.is_file() else self.config.flow


def key_of(run: Run, stage: Stage) -> str:
    """``stage``'s cache key in this run (``pipeline.stage.stage_key``)."""
    needs_data = any(s.reads_data for s in [stage, *stage.upstream()])
    return stage_key(stage, run.config.model_dump(mode="json"), run.data_fingerprint if needs_data else None)


def run_stage(run: Run, stage: Stage) -> dict:
    """Run ``stage`` unless its record is complete with the same key; returns the record.

    Every stage its inputs come from must have completed under the key this config gives it.
    """
    stage.check_wired()
    for up in {o.stage.name: o.stage for o in stage.used_sources(run.config.model_dump(mode="json")).values()}.values():
        rec = run.read_record(up.name)
        if rec is None or rec.get("status") not in ("completed", "cached") or rec.get("key") != key_of(run, up):
            raise RuntimeError(f"stage {stage.name} needs {up.name}, which has not completed with this config")
    key = key_of(run, stage)
    rec = run.read_record(stage.name)
    if rec and rec.get("status") in ("completed", "cached") and rec.get("key") == key:
        rec = {**rec, "status": "cached"}
        run.write_record(stage.name, rec)
        return rec
    run.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
    started = time.time()
    base = {"name": stage.name, "key": key, "started": started, "pid": os.getpid()}
    run.write_record(stage.name, {**base, "status": "running", "seconds": None, "metrics": {}})
    try:
        metrics = stage.fn(StageContext(run, stage, key)) or {}
    except BaseException as e:
        run.write_record(stage.name, {**base, "status": "failed", "seconds": round(time.time() - started, 3),
                                      "metrics": {}, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(limit=20)})
        raise
    rec = {**base, "status": "completed", "seconds": round(time.time() - started, 3), "metrics": metrics}
    run.write_record(stage.name, rec)
    return rec


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stage_status(rec: dict | None) -> str:
    """Contract status of a record: a stage still running shows as pending, a killed one as failed."""
    if rec is None:
        return "pending"
    st = rec.get("status")
    if st == "running":
        return "pending" if _pid_alive(rec.get("pid")) and rec.get("pid") != os.getpid() else "failed"
    return st if st in STATUSES else "pending"


#: the summary keys of every flow (null where no stage of the flow fills them); ``cls_map``: the image classifier's
#: val mAP (``stages/eval_classifier.py``), in the flows that train one
SUMMARY_KEYS = ("cls_map", "seed_miou", "pseudo_miou", "pseudo_coverage", "seg_miou")


def summarise(run: Run, stages: list[Stage]) -> dict[str, Any]:
    """The ``inspect --json`` object: every stage's status, seconds and metrics, and the summary that
    the stages' ``summary`` declarations fill from their metrics."""
    out, summary = [], dict.fromkeys(SUMMARY_KEYS)
    for stage in stages:
        rec = run.read_record(stage.name)
        status = stage_status(rec)
        metrics = rec.get("metrics", {}) if rec else {}
        out.append({"name": stage.name, "status": status, "seconds": rec.get("seconds") if rec else None,
                    "metrics": metrics})
        for key, metric in stage.summary.items():
            v = metrics.get(metric) if status in ("completed", "cached") else None
            summary[key] = float(v) if v is not None and v == v else None  # NaN (nothing scored) is null
    return {"flow": run.flow_name(), "run_dir": str(run.dir), "stages": out, "summary": summary}
