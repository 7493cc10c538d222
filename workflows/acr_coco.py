"""``acr_coco``: ACR (``acr_voc``'s stages) on MS COCO 2014, 81 classes.

The ``paper`` profile is ACR's released COCO run (OpenNLPLab/ACR_WSSS train_acr_coco.sh, train_acr_coco.py;
docs/coco.md has the table with file:line) over ``acr_voc``'s paper profile.
"""
from workflows.acr_voc import SPEC as ACR_VOC
from workflows.registry import coco_settings, define_flow

#: COCO train2014's images (82,783) // (batch 1 × 4 GPUs) × 5 epochs (train_acr_coco.py:108)
COCO_STEPS = 82783 // 4 * 5
PAPER = {
    "acr": {"alpha": 100.0, "beta": 100.0},  # train_acr_coco.py:62 --alpha default 100 (the .sh passes none), both terms :164-165
    "train_classifier": {"lr": 0.05,  # train_acr_coco.sh:7
                         "batch_size": 4,  # train_acr_coco.sh:8 --batch_size 1 per process × :10 -g 4
                         "crop_size": 384,  # train_acr_coco.sh:9
                         "steps": COCO_STEPS},  # train_acr_coco.sh:11 --max_epoches 5, train_acr_coco.py:108
    # the rest is acr_voc's paper profile, as the COCO script does the same: train_acr_coco.py:118 builds
    # torchutils.PolyOptimizer(lr, weight_decay=--wt_dec 5e-4 (:59)), which hands it positionally to SGD's momentum
    # (tool/torchutils.py:13): momentum 0.0005, no weight decay; long side [345, 438], hflip, crop 384
    # (myTool.py:1542 get_data_from_chunk_coco); every training image must have a label (myTool.py:1533 asserts it)
}

SPEC = define_flow("acr_coco", ACR_VOC.stages,
                   "ACR on MS COCO 2014: attention-consistent ViT → gradient-attention seeds → affinity random walk → pseudo labels → segmentation",
                   *coco_settings(ACR_VOC, PAPER))
