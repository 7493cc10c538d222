"""``acr_voc``: ACR — attention-consistent ViT, gradient-attention seeds, offline affinity + random walk, segmentation."""
from prefect import flow

from workflows.stages import (EVAL_PSEUDO_LABELS, EVAL_SEEDS, EVAL_SEGMENTATION, MAKE_PSEUDO_LABELS_FROM_RW, MAKE_SEEDS,
                              RANDOM_WALK, TRAIN_AFFINITY, TRAIN_CLASSIFIER, TRAIN_SEG_ON_PSEUDO, as_task)

STAGES = [TRAIN_CLASSIFIER, MAKE_SEEDS, EVAL_SEEDS, TRAIN_AFFINITY, RANDOM_WALK, MAKE_PSEUDO_LABELS_FROM_RW,
          EVAL_PSEUDO_LABELS, TRAIN_SEG_ON_PSEUDO, EVAL_SEGMENTATION]
DESCRIPTION = "ACR: attention-consistent ViT → gradient-attention seeds → affinity random walk → pseudo labels → segmentation"

#: the flow's own defaults (under every profile) and its per-profile ones (over the profile)
DEFAULTS = {"model": {"arch": "vit_acr"}, "cam": {"mode": "grad_aff"}}
PROFILE_DEFAULTS: dict[str, dict] = {}


@flow(name="acr_voc", description=DESCRIPTION)
def acr_voc(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
