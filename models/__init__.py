"""Backbones from timm with attention capture, heads, and method modules, registered by name."""
from models.registry import create_model, list_models, register_model

from models import acr, afa, affinity_net, cam_classifier, segmentation  # noqa: F401  (register the models)

__all__ = ["create_model", "list_models", "register_model"]
