"""A stage as a Prefect task; its metrics and the run's summary as Prefect artifacts.

A stage that the run folder's cache skips finishes in Prefect's ``Cached`` state (a kind of ``Completed``); each
task waits for the tasks of the stages it reads, so the run graph has their edges; the per-image and evaluation
stages (those that train no network) are retried once, unless the failure is the user's (a ``UserError``), and a
retry continues with the images not yet stored. Artifact keys carry the run folder's digest, so two runs of one flow
never collect versions of each other's artifacts.
"""
from __future__ import annotations

import hashlib
import re

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from pipeline.checkpoint import MODEL_FILE
from pipeline.errors import UserError
from pipeline.records import finite
from pipeline.runs import Run, run_stage, summarise
from pipeline.stage import Stage
from pipeline.voc import class_names_of


def artifact_key(run: Run, what: str) -> str:
    """``<flow>-<what>-<8 hex of the run folder>``, in the characters Prefect allows in a key."""
    digest = hashlib.sha256(str(run.dir.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9-]", "-", f"{run.flow_name()}-{what}-{digest}".lower())


def publish_metrics(run: Run, stage: str, record: dict) -> None:
    """The stage's scalar metrics as a table artifact; an evaluation stage's per-class IoU/FP/FN as another."""
    metrics = finite(record.get("metrics", {}))
    rows = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float, str))]
    rows.insert(0, {"metric": "status", "value": record["status"]})
    create_table_artifact(table=rows, key=artifact_key(run, stage), description=f"{stage} of {run.dir}")
    if "iou" in metrics:
        names = class_names_of(len(metrics["iou"]))  # VOC's 21 or COCO's 81
        present = metrics.get("present", [True] * len(names))
        per_class = [{"class": name, "iou": metrics["iou"][c], "fp": metrics["fp"][c], "fn": metrics["fn"][c]}
                     for c, name in enumerate(names) if present[c]]
        create_table_artifact(table=per_class, key=artifact_key(run, f"{stage}-per-class"),
                              description=f"{stage} of {run.dir}: per class")


def summary_markdown(info: dict) -> str:
    """``inspect``'s table as markdown (the flow run's summary artifact)."""
    def fmt(v):
        return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = [f"# {info['flow']} — `{info['run_dir']}`", "", "| stage | status | seconds | mIoU |", "|---|---|---|---|"]
    for s in info["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {fmt(s['seconds'])} | {fmt(s['metrics'].get('miou'))} |")
    lines += ["", "| summary | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in info["summary"].items()]
    return "\n".join(lines) + "\n"


def publish_summary(run: Run, stages: list[Stage]) -> None:
    info = summarise(run, stages)
    create_markdown_artifact(markdown=summary_markdown(info), key=artifact_key(run, "summary"),
                             description=f"{info['flow']} run in {run.dir}")


def _retry_unless_user_error(task_, task_run, state) -> bool:
    return not isinstance(state.result(raise_on_failure=False), UserError)


def as_task(stage: Stage):
    """A Prefect task running ``stage`` in the run folder (cached by the run's own records)."""
    trains = MODEL_FILE in stage.writes

    @task(name=stage.name, description=stage.description, cache_policy=NO_CACHE, persist_result=False,
          retries=0 if trains else 1, retry_condition_fn=_retry_unless_user_error)
    def _run(run_dir: str, force: bool = False):
        logger = get_run_logger()
        run = Run.open(run_dir)
        record = run_stage(run, stage, force)
        publish_metrics(run, stage.name, record)
        shown = " ".join(f"{k}={v:.4g}" for k, v in finite(record.get("metrics", {})).items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
        logger.info("%s %s (%.1f s when it ran) %s", stage.name, record["status"], record.get("seconds") or 0.0, shown)
        if record["status"] == "cached":
            return Completed(name="Cached", message=f"{stage.name}: unchanged (key {record['key']}), not run again",
                             data="cached")
        return record["status"]

    return _run
