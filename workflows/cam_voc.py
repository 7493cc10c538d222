"""``cam_voc``: ViT CAM baseline — classifier, CAM seeds, PAR/CRF pseudo labels, segmentation."""
from prefect import flow

from workflows.stages import (EVAL_PSEUDO_LABELS, EVAL_SEEDS, EVAL_SEGMENTATION, MAKE_PSEUDO_LABELS, MAKE_SEEDS,
                              TRAIN_CLASSIFIER, TRAIN_SEG_ON_PSEUDO, as_task)

STAGES = [TRAIN_CLASSIFIER, MAKE_SEEDS, EVAL_SEEDS, MAKE_PSEUDO_LABELS, EVAL_PSEUDO_LABELS, TRAIN_SEG_ON_PSEUDO,
          EVAL_SEGMENTATION]
DESCRIPTION = "ViT CAM baseline: classifier → CAM seeds → PAR/CRF pseudo labels → segmentation"


@flow(name="cam_voc", description=DESCRIPTION)
def cam_voc(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
