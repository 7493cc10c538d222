"""``afa_voc_multistage``: AFA's single-stage training, then the shared segmentation stage on its stored pseudo labels."""
from pipeline.checkpoint import MODEL_FILE
from pipeline.config import deep_update
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows import afa_voc
from workflows.registry import define_flow

segmentation = TRAIN_SEGMENTATION.wire(labels=afa_voc.PSEUDO.out(PSEUDO_LABELS))

SPEC = define_flow(
    "afa_voc_multistage",
    # the single-stage network's own val mIoU stays beside the multi-stage one, for comparison in ``inspect``
    [*afa_voc.LABEL_STAGES, afa_voc.OWN_BRANCH.named("eval_single_stage_segmentation", summary={}), segmentation,
     EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
    "AFA single stage → stored pseudo labels → separate segmentation network (both val mIoUs)",
    afa_voc.DEFAULTS,
    # afa_voc's own settings (so the first stages are shared, cached, between the two flows); in ``default`` the
    # separate segmentation network trains for half the shared 1200 steps, to keep the flow within 15 minutes
    deep_update(afa_voc.PROFILE_DEFAULTS, {"default": {"segmentation": {"train": {"steps": 600}}}}))
