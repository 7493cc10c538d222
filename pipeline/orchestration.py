"""Prefect defaults: telemetry off, embedded (ephemeral) local API unless the user configured a server.

Imported before prefect. Every value is a default: a user's environment or Prefect profile wins,
so a configured ``PREFECT_API_URL`` sends the flows to that server.
"""
from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "DO_NOT_TRACK": "1",  # client-side anonymous analytics
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the embedded server's analytics
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",  # start a temporary local API when none is configured
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def apply_prefect_defaults() -> None:
    for k, v in PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)


def log_runs_at_info() -> None:
    """Let the flow and task runs' own lines through at INFO (each stage's start, end, ``Cached`` state and progress
    lines: what a job under nohup or SLURM logs) while Prefect's other loggers stay at their level (a temporary
    server's start and stop stay out of the way of the last line, which is an error's when there is one)."""
    import logging
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.INFO)
