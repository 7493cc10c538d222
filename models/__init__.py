"""Backbones from timm with attention capture, heads and method modules, registered by name.

Every module of this package is imported here, so its models (``@register_model``) and config
sections (``@config_section``) are registered: a new method's model file needs no edit here.
"""
import importlib
import pkgutil

from models.registry import ModelSpec, create_model, list_models, register_model

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ModelSpec", "create_model", "list_models", "register_model"]
