"""``acr_voc``: ACR — attention-consistent ViT, gradient-attention seeds, offline affinity + random walk, segmentation."""
from prefect import flow

from workflows.stages import (EVAL_PSEUDO_LABELS, EVAL_SEEDS, EVAL_SEGMENTATION, MAKE_PSEUDO_LABELS_FROM_RW, MAKE_SEEDS,
                              RANDOM_WALK, TRAIN_AFFINITY, TRAIN_CLASSIFIER, TRAIN_SEG_ON_PSEUDO, as_task)

STAGES = [TRAIN_CLASSIFIER, MAKE_SEEDS, EVAL_SEEDS, TRAIN_AFFINITY, RANDOM_WALK, MAKE_PSEUDO_LABELS_FROM_RW,
          EVAL_PSEUDO_LABELS, TRAIN_SEG_ON_PSEUDO, EVAL_SEGMENTATION]
DESCRIPTION = "ACR: attention-consistent ViT → gradient-attention seeds → affinity random walk → pseudo labels → segmentation"

#: the flow's own defaults (under every profile) and its per-profile ones (over the profile)
DEFAULTS = {"model": {"arch": "vit_acr"}, "cam": {"mode": "grad_aff"}}
PROFILE_DEFAULTS: dict[str, dict] = {
    # from scratch on 2 CPU cores: a deeper ViT than the CAM baseline (a class token must learn where to
    # look) and light consistency weights (at α = β = 1 from scratch the attention collapses to uniform,
    # which satisfies both terms, and classification never leaves the prior; see README "ACR")
    "default": {"model": {"depth": 4}, "train_classifier": {"lr": 1e-3}, "acr": {"alpha": 0.02, "beta": 0.02},
                "affinity": {"log_t": 1}, "pseudo": {"bkg_threshold": 0.2}},
    "smoke": {"acr": {"alpha": 0.02, "beta": 0.02}, "affinity": {"log_t": 1}, "pseudo": {"bkg_threshold": 0.2}},
    # ViT-hybrid-B/16 (ResNet-50 stem) at 384 crops with ImageNet weights, as in the paper
    "paper": {"model": {"backbone": "vit_base_r50_s16_384"}, "pseudo": {"bkg_threshold": 0.25},
              "affinity": {"log_t": 8, "backbone": "resnet50", "pretrained": True, "dims": [64, 128, 256],
                           "train": {"steps": 8000, "batch_size": 8, "crop_size": 448, "lr": 0.1, "optimizer": "sgd",
                                     "weight_decay": 5e-4, "warmup_steps": 0, "checkpoint_every": 1000, "log_every": 50,
                                     "scale_range": [0.7, 1.3], "color_jitter": 0.0}}},
}


@flow(name="acr_voc", description=DESCRIPTION)
def acr_voc(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
