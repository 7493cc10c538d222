"""A stage as a Prefect task, and its metrics as a Prefect table artifact."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.runs import Run, run_stage
from pipeline.stage import Stage


def _artifact_key(run: Run, stage: str) -> str:
    return f"{run.flow_name()}-{stage}".lower().replace("_", "-")


def publish_metrics(run: Run, stage: str, record: dict) -> None:
    """The stage's scalar metrics as a Prefect table artifact."""
    rows = [{"metric": k, "value": v} for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float, str))]
    rows.insert(0, {"metric": "status", "value": record["status"]})
    create_table_artifact(table=rows, key=_artifact_key(run, stage), description=f"{stage} of {run.dir}")


def as_task(stage: Stage):
    """A Prefect task running ``stage`` in the run folder (cached by the run's own records)."""

    @task(name=stage.name, description=stage.description, cache_policy=NO_CACHE, persist_result=False)
    def _run(run_dir: str) -> str:
        run = Run.open(run_dir)
        record = run_stage(run, stage)
        publish_metrics(run, stage.name, record)
        return record["status"]

    return _run
