"""Checkpoints as safetensors with a JSON sidecar; never pickles.

A checkpoint is one file: its metadata (config, step, optimiser scalars, …) lives in the safetensors header
beside the tensors it describes, so weights and step can never come from two different saves. The ``.json``
sidecar beside it is a readable copy for people and other tools; it is read only for files written before the
header held the metadata (the committed stand-ins).

``save_weights``/``load_weights`` hold a model's weights; ``save_train_state``/``load_train_state``
hold everything a training stage needs to continue exactly: model, optimiser state, step and
the torch RNG state (the learning-rate schedule is a function of the step).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.fsutil import atomic_write_text, commit_file, temp_sibling

#: the trained weights every training stage leaves in its folder (its sidecar holds the model spec)
MODEL_FILE = "model.safetensors"


def _sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_weights(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], header: bool = True) -> None:
    """Write ``path`` (.safetensors, ``meta`` in its header) atomically and durably, then the readable sidecar.

    The file is written under a unique temporary name, fsynced and renamed (the folder fsynced too): a crash leaves
    the previous checkpoint whole, and the step in the header always belongs to the weights beside it.
    ``header=False`` keeps the file to the tensors alone (reproducible bytes, as the shipped stand-ins): its sidecar
    must then pair itself with the file (the stand-ins' sidecar holds the file's sha256).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta)
    tmp = temp_sibling(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp),
              metadata={META_KEY: text} if header else None)
    commit_file(tmp, path)
    atomic_write_text(_sidecar(path), json.dumps(meta, indent=1))


#: the safetensors header entry holding a checkpoint's metadata (JSON)
META_KEY = "wsss_meta"


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of the checkpoint ``path``: its header's, or (a file from before) its sidecar's."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if META_KEY in header:
        return json.loads(header[META_KEY])
    return json.loads(_sidecar(path).read_text()) if _sidecar(path).is_file() else {}


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of ``path`` and their metadata (``read_meta``)."""
    path = Path(path)
    return load_file(str(path)), read_meta(path)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    for key, val in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                     meta: dict[str, Any], scaler: torch.amp.GradScaler | None = None) -> None:
    """The training state at ``step``: model, optimiser, the CPU (and current GPU's) RNG, fp16 loss scale."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    otensors, ometa = _flatten_optimizer(opt)
    tensors.update(otensors)
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    extra = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
    save_weights(path, tensors, {**meta, "step": step, "optimizer": ometa, **extra})


def load_train_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """Restore model, optimiser, RNG (and loss scale) from ``path``, onto the model's device; returns the
    sidecar (with ``step``)."""
    tensors, meta = load_weights(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))  # moves the state to the params' device
    torch.set_rng_state(tensors["rng.torch"])
    device = next(model.parameters()).device
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    if scaler is not None and scaler.is_enabled() and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return meta


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """Backbone weights from a local file: safetensors, or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
    return sd
