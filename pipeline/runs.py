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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import RunConfig
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text
from pipeline.synthetic import embedded_dataset
from pipeline.voc import VOCDataset, find_voc_root

STATUSES = ("completed", "cached", "failed", "pending")


class Run:
    """A run folder and its resolved config."""

    def __init__(self, run_dir: str | Path, config: RunConfig) -> None:
        self.dir = Path(run_dir)
        self.config = config

    @classmethod
    def create(cls, run_dir: str | Path, config: RunConfig) -> "Run":
        run = cls(run_dir, config)
        run.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.dir / "config.yaml", config.to_yaml())
        atomic_write_text(run.dir / "run.json", json.dumps({"flow": config.flow, "profile": config.profile,
                                                           "updated": time.time()}))
        return run

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        d = Path(run_dir)
        if not (d / "config.yaml").is_file():
            raise UserError(f"{d} is not a run folder (no config.yaml): give the --run-dir of a run-flow call")
        return cls(d, RunConfig.model_validate(yaml.safe_load((d / "config.yaml").read_text())))

    # data ---------------------------------------------------------------------------------------
    @cached_property
    def voc_root(self) -> Path:
        d = self.config.data
        if d.root is None:
            s = d.synthetic
            return embedded_dataset(s.train, s.val, s.seed, s.min_size, s.max_size)
        return find_voc_root(Path(d.root))

    def dataset(self, split: str) -> VOCDataset:
        return VOCDataset(self.voc_root, split, self.config.data.max_images)

    @cached_property
    def data_fingerprint(self) -> str:
        h = hashlib.sha256(str(self.voc_root.resolve()).encode())
        lists = self.voc_root / "ImageSets" / "Segmentation"
        d = self.config.data
        for split in sorted({d.train_split, d.label_split, d.val_split, self.config.segmentation.eval_split}):
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


@dataclass
class Stage:
    """A stage: ``fn(ctx) -> metrics``, the config sections it depends on, the stages it reads."""

    name: str
    fn: Callable[["StageContext"], dict]
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    version: int = 1
    description: str = ""


@dataclass
class StageContext:
    run: Run
    stage: Stage
    key: str
    extra: dict = field(default_factory=dict)

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def dir(self) -> Path:
        return self.run.stage_dir(self.stage.name)

    def input_dir(self, name: str) -> Path:
        return self.run.stage_dir(name)


def stage_key(run: Run, stage: Stage) -> str:
    payload = {"stage": stage.name, "version": stage.version, "data": run.data_fingerprint,
               "config": {s: run.config.section(s) for s in stage.sections}, "inputs": {}}
    for inp in stage.inputs:
        rec = run.read_record(inp)
        if rec is None or rec.get("status") not in ("completed", "cached"):
            raise RuntimeError(f"stage {stage.name} needs {inp}, which has not completed")
        payload["inputs"][inp] = rec["key"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(run: Run, stage: Stage) -> dict:
    """Run ``stage`` unless its record is complete with the same key; returns the record."""
    key = stage_key(run, stage)
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


def summarise(run: Run, stage_names: list[str]) -> dict[str, Any]:
    """The ``inspect --json`` object of the contract."""
    stages = []
    for name in stage_names:
        rec = run.read_record(name)
        stages.append({"name": name, "status": stage_status(rec),
                       "seconds": rec.get("seconds") if rec else None,
                       "metrics": rec.get("metrics", {}) if rec else {}})
    by = {s["name"]: s for s in stages}

    def metric(stage: str, key: str):
        s = by.get(stage)
        if s and s["status"] in ("completed", "cached"):
            v = s["metrics"].get(key)
            return float(v) if v is not None else None
        return None

    summary = {"seed_miou": metric("eval_seeds", "miou"), "pseudo_miou": metric("eval_pseudo_labels", "miou"),
               "pseudo_coverage": metric("eval_pseudo_labels", "coverage"), "seg_miou": metric("eval_segmentation", "miou")}
    return {"flow": run.flow_name(), "run_dir": str(run.dir), "stages": stages, "summary": summary}
