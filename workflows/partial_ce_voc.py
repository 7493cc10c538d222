"""``partial_ce_voc``: the sparse-label baseline of the APro and SASFormer tables — the shared segmentation network
trained with partial cross-entropy (the labelled pixels only: ``train_segmentation`` on the sparse store, 255
ignored), its predictions on ``data.label_split`` stored as pseudo labels and scored, then val."""
from pipeline.checkpoint import MODEL_FILE
from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
from stages.eval_segmentation import EVAL_SEGMENTATION
from stages.eval_sparse_labels import EVAL_SPARSE_LABELS
from stages.make_pseudo_labels import PSEUDO_LABELS
from stages.predict_pseudo_labels import PREDICTED_PSEUDO_LABELS
from stages.sparse_labels import SPARSE_LABELS, SPARSE_LABELS_STAGE
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows.registry import define_flow

sparse = SPARSE_LABELS_STAGE.out(SPARSE_LABELS)
#: the sparse annotations and their score, the first stages of every sparse flow
SPARSE_STAGES = [SPARSE_LABELS_STAGE, EVAL_SPARSE_LABELS.wire(labels=sparse)]
segmentation = TRAIN_SEGMENTATION.wire(labels=sparse)
pseudo = PREDICTED_PSEUDO_LABELS.wire(model=segmentation.out(MODEL_FILE))

SPEC = define_flow("partial_ce_voc", [*SPARSE_STAGES, segmentation, pseudo, EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS)),
                                      EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))],
                   "points/scribbles baseline: segmentation with partial cross-entropy → predictions as pseudo labels, val mIoU")
