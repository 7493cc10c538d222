"""A registry of model constructors by name, in the manner of timm's, and the spec a model is rebuilt from.

A training stage builds its network from a ``ModelSpec`` (a registered name and typed keyword
arguments, made from the config by the method's ``*_spec`` function) and stores the spec in the
checkpoint's sidecar; every later stage rebuilds the trained network from that sidecar alone
(``ModelSpec.for_inference().build()``), whatever method made it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a typed model constructor under its function name."""
    if fn.__name__ in _MODELS and _MODELS[fn.__name__] is not fn:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name``, built with ``kwargs`` (checked against its signature)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    fn = _MODELS[name]
    inspect.signature(fn).bind(**kwargs)  # a TypeError naming the argument, before any weights are built
    return fn(**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)


#: constructor arguments that fetch initial weights; a trained model's own weights replace them
INITIAL_WEIGHTS = {"pretrained": False, "weights": None}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model's name and constructor arguments (JSON-serialisable)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return create_model(self.name, **self.kwargs)

    def for_inference(self) -> "ModelSpec":
        """The same network without fetching initial weights (trained weights are loaded over it)."""
        def strip(v):
            if isinstance(v, dict):
                return {k: (INITIAL_WEIGHTS[k] if k in INITIAL_WEIGHTS else strip(x)) for k, x in v.items()}
            return v
        return replace(self, kwargs=strip(self.kwargs))

    def to_json(self) -> dict:
        return {"name": self.name, "kwargs": self.kwargs}

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], dict(d["kwargs"]))
