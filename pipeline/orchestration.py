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
}


def apply_prefect_defaults() -> None:
    """Set every default the environment does not set. Prefect logs at WARNING on a terminal (the progress bars show
    the rest) and at INFO otherwise (nohup, SLURM: each stage's start, end and progress lines)."""
    import sys
    level = "WARNING" if sys.stderr.isatty() or os.environ.get("WSSS_PROGRESS") == "1" else "INFO"
    for k, v in {**PREFECT_DEFAULTS, "PREFECT_LOGGING_LEVEL": level}.items():
        os.environ.setdefault(k, v)
