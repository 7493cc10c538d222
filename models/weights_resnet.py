"""torchvision's released ResNets (``resnet101-*.pth``; APro's ``resnet101-b641f3a9.pth``) → a timm ResNet.

torchvision's ``ResNet`` and timm's share every name (``conv1``, ``bn1``, ``layer{1..4}.{j}.conv{1,2,3}`` /
``bn{1,2,3}`` / ``downsample.{0,1}``, ``fc``) and the architecture (7×7 stride-2 stem, 3×3 max pool, the stride on
the bottleneck's 3×3 conv, "pytorch" style as APro's mmdet config sets, ``configs/apro_box2mask/
box2mask_r101_lsj_8x2_50e_voc.py:7-16``). Two differences are handled by name: the ImageNet classifier ``fc.*``
is dropped when the backbone has none (``features_only``), and files saved before torchvision 0.4.1 lack the
BatchNorm step counters ``*.num_batches_tracked`` (0 here; timm's BatchNorm uses a fixed momentum, so they change
nothing). The caffe-converted DeepLab-v2 ResNet-101 (``Scale.*`` / ``layer5`` keys) puts its strides in the 1×1
convolutions: another network, refused with one line.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from models.weights import Conversion, Layout, convert_by_name, register_layout
from pipeline.errors import UserError

TORCHVISION_CLASSIFIER = ("fc.weight", "fc.bias")


def convert_torchvision_resnet(tensors: dict[str, torch.Tensor], backbone: Mapping[str, torch.Tensor]) -> Conversion:
    c = convert_by_name(tensors, str, lambda k: (
        "the ImageNet classifier (a features_only backbone has none)"
        if k in TORCHVISION_CLASSIFIER and k not in backbone else None))
    out, source, dropped, notes = c.tensors, c.source, c.dropped, []
    counters = [k for k in backbone if k.endswith("num_batches_tracked") and k not in out
                and k.replace("num_batches_tracked", "running_mean") in out]
    for k in counters:
        out[k], source[k] = torch.zeros((), dtype=torch.long), k
    if counters:
        notes.append(f"{len(counters)} BatchNorm step counters (num_batches_tracked) absent from the file (torchvision "
                     "< 0.4.1): set to 0")
    return Conversion(out, source, dropped, tuple(notes))


def _is_deeplab_caffe(keys: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("Scale.") or k.startswith("layer5.") for k in keys)


def refuse_deeplab_caffe(tensors: dict[str, torch.Tensor], _backbone: Mapping[str, torch.Tensor]) -> Conversion:
    raise UserError("this weights file is the caffe-converted DeepLab-v2 ResNet-101 (Scale.* / layer5.* keys): its "
                    "strides sit in the 1×1 convolutions, another network than timm's resnet101; pass torchvision's "
                    "ImageNet resnet101-*.pth instead (docs/weights.md)")


DEEPLAB_CAFFE = register_layout(Layout("deeplab-caffe-resnet", "resnet", "DeepLab-v2's caffe ResNet-101 (not supported)",
                                       _is_deeplab_caffe, refuse_deeplab_caffe))
TORCHVISION_RESNET = register_layout(Layout(
    "torchvision-resnet", "resnet", "torchvision's released resnet*.pth (APro's mmdet config loads resnet101-b641f3a9.pth)",
    lambda keys: "conv1.weight" in keys and "bn1.running_mean" in keys and "layer1.0.conv1.weight" in keys,
    convert_torchvision_resnet))
