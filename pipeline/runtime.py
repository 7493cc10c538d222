"""Where and how networks run: the device, mixed precision, and the processes of a distributed training.

The run config's scale knobs (``device``, ``amp``, ``devices``) become one ``Runtime``; every stage
that runs a network takes its device and autocast from here, so each rule exists once:

- ``resolve_device``: ``auto`` → the first GPU when there is one, else the CPU; ``cuda`` / ``cuda:N``
  where there is no such GPU → one ``UserError`` line (the flow checks it before any stage runs).
- ``Runtime.autocast()``: ``torch.autocast`` with bf16 or fp16 (``amp``), a no-op for ``off``. The CPU
  runs bf16 and fp16 autocast too (slower than fp32 on most CPUs: it is there to test the path).
- ``Runtime.grad_scaler()``: gradient scaling for fp16 (``torch.amp.GradScaler``), disabled otherwise.
- ``Runtime.rank`` / ``world``: this process's place in a DistributedDataParallel training
  (``pipeline.distributed``); 0 / 1 outside one.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from pipeline.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str) -> torch.device:
    """The torch device that the ``device`` knob names; refuses a GPU that this machine does not have.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    pipeline.errors.UserError: device='tpu' is not a device: use auto, cpu, cuda or cuda:N
    """
    if not DEVICE_PATTERN.match(name):
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name} but this machine has no CUDA GPU that torch can use "
                            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): use --set device=cpu or auto")
        if (dev.index or 0) >= count:
            raise UserError(f"device={name} but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    return dev


@dataclass(frozen=True)
class Runtime:
    """The device, precision and process place of one process running networks."""

    device: str = "cpu"  # a resolved device (``resolve_device``), e.g. "cpu", "cuda:1"
    amp: Literal["off", "bf16", "fp16"] = "off"
    rank: int = 0
    world: int = 1

    @classmethod
    def from_config(cls, config: Any) -> "Runtime":
        """The runtime of a run config (or a stage's view of one that reads ``amp``)."""
        return cls(str(resolve_device(config.device)), config.amp)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device.type == "cuda"

    def for_rank(self, rank: int, world: int) -> "Runtime":
        """This runtime in process ``rank`` of ``world``: on GPUs process r takes the r-th GPU from the chosen one
        (``device: cuda:2``, ``devices: 2`` → cuda:2 and cuda:3)."""
        dev = f"cuda:{(self.torch_device.index or 0) + rank}" if self.on_gpu and world > 1 else self.device
        return replace(self, device=dev, rank=rank, world=world)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for a forward pass (and its loss), or nothing when ``amp`` is off."""
        if self.amp == "off":
            return contextlib.nullcontext()
        if self.amp == "bf16" and self.on_gpu and torch.cuda.get_device_capability(self.torch_device)[0] < 8:
            # before Ampere bf16 is only emulated (is_bf16_supported() says yes on a V100): refuse it
            raise UserError(f"amp=bf16 but {torch.cuda.get_device_name(self.torch_device)} has no bf16 units: "
                            "use --set amp=fp16")
        return torch.autocast(self.torch_device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 training (gradients would underflow in half precision); disabled otherwise."""
        return torch.amp.GradScaler(self.torch_device.type, enabled=self.amp == "fp16")

    def to(self, obj: Any, non_blocking: bool = False) -> Any:
        """``obj`` (a tensor, module, or a tuple/list/dict of them) on this runtime's device."""
        if isinstance(obj, (torch.Tensor, torch.nn.Module)):
            return obj.to(self.torch_device, non_blocking=non_blocking) if isinstance(obj, torch.Tensor) else obj.to(self.torch_device)
        if isinstance(obj, (tuple, list)):
            return type(obj)(self.to(o, non_blocking) for o in obj)
        if isinstance(obj, dict):
            return {k: self.to(v, non_blocking) for k, v in obj.items()}
        return obj


def check_runtime(config: Any) -> Runtime:
    """Every scale knob of a run config checked against this machine (before any stage runs): the device exists,
    bf16 runs on it, and ``devices`` GPUs are there; the runtime, or one ``UserError`` line."""
    rt = Runtime.from_config(config)
    with rt.autocast():  # refuses bf16 on a GPU without it
        pass
    if rt.on_gpu and (rt.torch_device.index or 0) + config.devices > torch.cuda.device_count():
        raise UserError(f"device={config.device} with devices={config.devices} needs GPUs this machine does not have "
                        f"({torch.cuda.device_count()}: cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return rt


def launched_world() -> tuple[int, int]:
    """``(rank, world size)`` that a launcher such as ``torchrun`` set in the environment, else ``(0, 1)``."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
