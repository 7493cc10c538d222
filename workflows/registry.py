"""Flows by name. A flow module calls ``define_flow`` once: its stages (wired), description and
config defaults; the Prefect flow that runs the stages in order is made here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prefect import flow as prefect_flow

from pipeline.config import RunConfigBase, resolve_config
from pipeline.errors import UserError
from pipeline.parallel import check_executor
from pipeline.runs import Run
from pipeline.runtime import check_runtime
from pipeline.stage import Stage
from workflows.tasks import as_task

FLOWS: dict[str, "FlowSpec"] = {}


@dataclass(frozen=True)
class FlowSpec:
    name: str
    flow: Callable
    stages: list[Stage]
    description: str
    defaults: dict  # the flow's own config defaults, under the profile
    profile_defaults: dict = field(default_factory=dict)  # per profile, over the profile

    def resolve(self, profile: str = "default", sets: list[str] | tuple[str, ...] = (),
                data_root: str | None = None) -> RunConfigBase:
        """This flow's config: defaults ← flow defaults ← profile ← flow's profile defaults ← ``--set``."""
        return resolve_config(self.name, profile, sets, self.defaults, data_root, self.profile_defaults)


def define_flow(name: str, stages: list[Stage], description: str, defaults: dict | None = None,
                profile_defaults: dict[str, dict] | None = None) -> FlowSpec:
    """Register flow ``name``: a Prefect flow that runs ``stages`` in order, each as a task.

    Every stage's inputs must be wired to stages that come before it in the list.
    """
    earlier: dict[str, Stage] = {}
    for st in stages:
        st.check_wired()
        for role, o in st.sources.items():
            if earlier.get(o.stage.name) is not o.stage:
                raise ValueError(f"flow {name}: {st.name}.{role} reads {o.stage.name}, which does not run before it")
        if st.name in earlier:
            raise ValueError(f"flow {name}: two stages named {st.name}")
        earlier[st.name] = st
    tasks = [as_task(st) for st in stages]

    @prefect_flow(name=name, description=description)
    def run_flow(run_dir: str) -> None:
        config = Run.open(run_dir).config
        check_runtime(config)  # a missing GPU or Dask scheduler fails here, before any stage
        check_executor(config.workers)
        for t in tasks:
            t(run_dir)

    spec = FlowSpec(name, run_flow, list(stages), description, defaults or {}, profile_defaults or {})
    if name in FLOWS:
        raise ValueError(f"flow {name!r} is defined twice")
    FLOWS[name] = spec
    return spec


def get_flow(name: str) -> FlowSpec:
    if name not in FLOWS:
        raise UserError(f"unknown flow {name!r}: `python cli.py list-flows` lists {', '.join(sorted(FLOWS))}")
    return FLOWS[name]
