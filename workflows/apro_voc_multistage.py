"""``apro_voc_multistage``: APro's single-stage training, then the shared segmentation stage on its stored pseudo labels."""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows import apro_voc
from workflows.registry import define_flow

segmentation = TRAIN_SEGMENTATION.wire(labels=apro_voc.PSEUDO.out(PSEUDO_LABELS))

SPEC = define_flow(
    "apro_voc_multistage",
    # APro's own val mIoU stays beside the multi-stage one, for comparison in ``inspect``
    [*apro_voc.LABEL_STAGES, apro_voc.OWN_BRANCH.named("eval_single_stage_segmentation", summary={}), segmentation,
     EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
    "APro single stage → stored pseudo labels → separate segmentation network (both val mIoUs)",
    {}, apro_voc.PROFILE_DEFAULTS)
