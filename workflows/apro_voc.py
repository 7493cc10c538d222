"""``apro_voc``: APro (Li et al., NeurIPS 2023) single stage on points or scribbles — the segmentation network
trained with partial cross-entropy plus affinity propagation (GP over the image's minimum spanning tree, LP over
windows), its GP+LP-refined predictions on ``data.label_split`` stored as pseudo labels and scored, then val.

APro's parts: ``models/apro.py`` (GP, LP, the loss, the ``apro`` config section), ``stages/train_apro.py``,
``stages/apro_pseudo_labels.py``; the sparse annotations: ``pipeline/sparse.py``, ``stages/sparse_labels.py``.
"""
from stages.apro_pseudo_labels import APRO_PSEUDO_LABELS
from stages.train_apro import TRAIN_APRO
from workflows.registry import define_flow, sparse_network_stages

#: the sparse stages, the training, the pseudo labels and their score (shared with ``apro_voc_multistage``), val
STAGES = sparse_network_stages(TRAIN_APRO, APRO_PSEUDO_LABELS)
PROFILE_DEFAULTS: dict[str, dict] = {
    # the paper's WSSS setting: ResNet-101 (ImageNet), 512 crops, SGD lr 0.001 momentum 0.9 weight decay 1e-4, 80k
    # iterations (the release has no WSSS training script: these are the paper's). The propagation (1/4 of the crop,
    # GP at 96×96 on the normalised input, L = L_g + L_u) is the apro section's paper profile (models/apro.py)
    # the backbone starts from the torchvision file APro's config loads (configs/apro_box2mask/
    # box2mask_r101_lsj_8x2_50e_voc.py:16: resnet101-b641f3a9.pth), put in pretrained/ or passed as segmentation.weights
    "paper": {"segmentation": {"backbone": "resnet101", "pretrained": False, "weights": "pretrained/resnet101-b641f3a9.pth",
                               "train": {"steps": 80000, "batch_size": 16, "crop_size": 512, "scale_range": [0.5, 2.0],
                                         "optimizer": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4,
                                         "head_lr_mult": 10.0, "warmup_steps": 0}}},
}

SPEC = define_flow("apro_voc", [*STAGES.label_stages, STAGES.own_branch],
                   "APro on points/scribbles: segmentation + global (MST) and local affinity propagation → pseudo labels, val mIoU",
                   {}, PROFILE_DEFAULTS)
