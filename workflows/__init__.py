"""Prefect flows, one module per method and dataset; each only wires stages and calls ``define_flow``.

Every module of this package is imported here (so is every stage and model it uses): a new flow
module registers itself, with no edit to this file or the registry.
"""
import importlib
import pkgutil

from pipeline.orchestration import apply_prefect_defaults

apply_prefect_defaults()

from workflows.registry import FLOWS, FlowSpec, define_flow, get_flow  # noqa: E402

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("registry", "tasks"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["FLOWS", "FlowSpec", "define_flow", "get_flow"]
