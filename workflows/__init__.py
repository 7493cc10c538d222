"""Prefect flows, one per method and dataset. Each only wires stages (see ``workflows.stages``)."""
from pipeline.orchestration import apply_prefect_defaults

apply_prefect_defaults()

from workflows.registry import FLOWS, get_flow  # noqa: E402

__all__ = ["FLOWS", "get_flow"]
