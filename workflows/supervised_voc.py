"""``supervised_voc``: the segmentation stage on ground-truth masks — the upper bound of every weak flow."""
from prefect import flow

from workflows.stages import EVAL_SEGMENTATION, TRAIN_SEG_ON_GT, as_task

STAGES = [TRAIN_SEG_ON_GT, EVAL_SEGMENTATION]
DESCRIPTION = "fully supervised upper bound: segmentation on ground-truth masks"


@flow(name="supervised_voc", description=DESCRIPTION)
def supervised_voc(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
