"""Reading a run folder's records without the heavy imports: ``inspect``, ``compare`` and ``export`` answer in well
under a second (no torch, no Prefect, no Zarr on these paths).

``run.json`` holds the flow's stage list (names and the summary keys they fill), written by ``run-flow``; a stage's
``record.json`` its status, key, seconds, metrics and outputs. ``summarise`` builds ``inspect --json``'s object
from them; every float that is not finite (NaN: nothing to score) becomes ``null``, so the output is strict JSON.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

#: the layout version of ``run.json`` and of stage records; a file of a newer version is refused
RUN_SCHEMA = 1
RECORD_SCHEMA = 1
STATUSES = ("completed", "cached", "failed", "pending")
#: the summary keys of every flow (null where no stage of the flow fills them); ``cls_map``: the image classifier's
#: val mAP (``stages/eval_classifier.py``), in the flows that train one
SUMMARY_KEYS = ("cls_map", "seed_miou", "pseudo_miou", "pseudo_coverage", "seg_miou")


def read_json_file(path: Path, what: str, newest: int) -> dict:
    """The JSON object in ``path`` (a ``what`` of schema ``newest`` or older), or one line naming the file
    (``UserError``) when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable {what} ({type(e).__name__}: {e}): move it aside to start it anew") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a {what} (a JSON object was expected): move it aside to start it anew")
    schema = data.get("schema", 0)  # files from before the schema field are schema 0, read as they are
    if not isinstance(schema, int) or schema > newest:
        raise UserError(f"{path} was written by a newer version of this project (schema {schema!r}, this one reads "
                        f"up to {newest}): update the project or use another --run-dir")
    return data


def read_run_description(run_dir: Path) -> dict:
    """``run.json`` of a run folder (``UserError`` naming the folder when it is not one)."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file() or not (d / "run.json").is_file():
        raise UserError(f"{d} is not a run folder (no config.yaml and run.json): give the --run-dir of a run-flow call")
    return read_json_file(d / "run.json", "run description", RUN_SCHEMA)


def read_record(run_dir: Path, stage: str) -> dict | None:
    p = Path(run_dir) / "stages" / stage / "record.json"
    return read_json_file(p, "stage record", RECORD_SCHEMA) if p.is_file() else None


def pid_alive(pid: int | None) -> bool:
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
        return "pending" if pid_alive(rec.get("pid")) and rec.get("pid") != os.getpid() else "failed"
    return st if st in STATUSES else "pending"


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None, at any depth (strict JSON has no NaN).

    >>> finite({"iou": [0.5, float("nan")], "n": 3, "x": float("inf")})
    {'iou': [0.5, None], 'n': 3, 'x': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def calibration_text(calibration: dict | None) -> str | None:
    """How inspect and compare mark a calibrated run.

    >>> calibration_text({"split": "train", "images": 50}), calibration_text(None)
    ('calibrated on 50 images of train', None)
    """
    return None if not calibration else f"calibrated on {calibration['images']} images of {calibration['split']}"


def summarise(run_dir: Path, flow: str, stages: list[dict]) -> dict[str, Any]:
    """The ``inspect --json`` object of a run: every stage's status, seconds and metrics (``stages``: the flow's
    ``[{"name", "summary"}]``), and the summary that the stages' ``summary`` declarations fill from their metrics."""
    out, summary = [], dict.fromkeys(SUMMARY_KEYS)
    for stage in stages:
        rec = read_record(run_dir, stage["name"])
        status = stage_status(rec)
        metrics = rec.get("metrics", {}) if rec else {}
        entry = {"name": stage["name"], "status": status, "seconds": rec.get("seconds") if rec else None,
                 "metrics": metrics}
        progress = Path(run_dir) / "stages" / stage["name"] / "progress.json"
        if rec and rec.get("status") == "running" and status == "pending" and progress.is_file():
            try:
                entry["progress"] = json.loads(progress.read_text())  # step n/N or images done of a running stage
            except ValueError:
                pass
        out.append(entry)
        for key, metric in stage.get("summary", {}).items():
            v = metrics.get(metric) if status in ("completed", "cached") else None
            summary[key] = float(v) if isinstance(v, (int, float)) else None
    # the masks the labelling read: {"split", "images"} of pseudo.calibrate (run.json, pipeline.runs.calibration_summary)
    desc = Path(run_dir) / "run.json"
    summary["calibration"] = read_json_file(desc, "run description", RUN_SCHEMA).get("calibration") if desc.is_file() else None
    return finite({"flow": flow, "run_dir": str(run_dir), "stages": out, "summary": summary})
