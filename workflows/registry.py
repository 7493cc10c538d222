"""Flows by name: the Prefect flow, its stages (for inspect) and its one-line description."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import UserError
from workflows import acr_voc, afa_voc, afa_voc_multistage, cam_voc, supervised_voc


@dataclass(frozen=True)
class FlowSpec:
    name: str
    flow: Callable
    stages: list
    description: str
    defaults: dict  # the flow's own config defaults, under the profile
    profile_defaults: dict = field(default_factory=dict)  # per profile, over the profile


FLOWS: dict[str, FlowSpec] = {
    "acr_voc": FlowSpec("acr_voc", acr_voc.acr_voc, acr_voc.STAGES, acr_voc.DESCRIPTION, acr_voc.DEFAULTS,
                        acr_voc.PROFILE_DEFAULTS),
    "afa_voc": FlowSpec("afa_voc", afa_voc.afa_voc, afa_voc.STAGES, afa_voc.DESCRIPTION, afa_voc.DEFAULTS,
                        afa_voc.PROFILE_DEFAULTS),
    "afa_voc_multistage": FlowSpec("afa_voc_multistage", afa_voc_multistage.afa_voc_multistage, afa_voc_multistage.STAGES,
                                   afa_voc_multistage.DESCRIPTION, afa_voc_multistage.DEFAULTS,
                                   afa_voc_multistage.PROFILE_DEFAULTS),
    "cam_voc": FlowSpec("cam_voc", cam_voc.cam_voc, cam_voc.STAGES, cam_voc.DESCRIPTION, {}),
    "supervised_voc": FlowSpec("supervised_voc", supervised_voc.supervised_voc, supervised_voc.STAGES,
                               supervised_voc.DESCRIPTION, {}),
}


def get_flow(name: str) -> FlowSpec:
    if name not in FLOWS:
        raise UserError(f"unknown flow {name!r}: `python cli.py list-flows` lists {', '.join(sorted(FLOWS))}")
    return FLOWS[name]
