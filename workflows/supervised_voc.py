"""``supervised_voc``: the segmentation stage on ground-truth masks — the upper bound of every weak flow."""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows.registry import define_flow

SPEC = define_flow("supervised_voc", [TRAIN_SEGMENTATION, EVAL_SEGMENTATION.wire(model=TRAIN_SEGMENTATION.out(MODEL_FILE))],
                   "fully supervised upper bound: segmentation on ground-truth masks")
