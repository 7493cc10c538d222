"""``afa_voc_multistage``: AFA's single-stage training, then the shared segmentation stage on its stored pseudo labels."""
from dataclasses import replace

from prefect import flow

from pipeline.config import deep_update
from workflows import afa_voc
from workflows.stages import EVAL_SEGMENTATION, EVAL_SINGLE_STAGE_SEGMENTATION, TRAIN_SEG_ON_PSEUDO, as_task

#: the single-stage network's own val mIoU stays beside the multi-stage one, for comparison in ``inspect``
EVAL_OWN_BRANCH = replace(EVAL_SINGLE_STAGE_SEGMENTATION, name="eval_single_stage_segmentation")
STAGES = [*afa_voc.STAGES[:-1], EVAL_OWN_BRANCH, TRAIN_SEG_ON_PSEUDO, EVAL_SEGMENTATION]
DESCRIPTION = "AFA single stage → stored pseudo labels → separate segmentation network (both val mIoUs)"
DEFAULTS = afa_voc.DEFAULTS
#: afa_voc's own settings (so the first stages are shared, cached, between the two flows); in ``default`` the
#: separate segmentation network trains for half the shared 1200 steps, to keep the flow within 15 minutes
PROFILE_DEFAULTS = deep_update(afa_voc.PROFILE_DEFAULTS, {"default": {"segmentation": {"train": {"steps": 600}}}})


@flow(name="afa_voc_multistage", description=DESCRIPTION)
def afa_voc_multistage(run_dir: str) -> None:
    for stage in STAGES:
        as_task(stage)(run_dir)
