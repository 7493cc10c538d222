"""``pretrain``: the pretrained stand-ins — every backbone family of the ``default`` profiles trained on the
procedural classification corpus (``models/standins.py``, ``pipeline/corpus.py``, ``stages/pretrain_backbone.py``)."""
from stages.pretrain_backbone import PRETRAIN_STAGES
from workflows.registry import define_flow

SPEC = define_flow("pretrain", PRETRAIN_STAGES,
                   "stand-in backbones (ViT, ViT-hybrid, MiT, Swin, ResNet) pretrained on a procedural 32-class corpus")
