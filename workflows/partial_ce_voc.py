"""``partial_ce_voc``: the sparse-label baseline of the APro and SASFormer tables — the shared segmentation network
trained with partial cross-entropy (the labelled pixels only: ``train_segmentation`` on the sparse store, 255
ignored), its predictions on ``data.label_split`` stored as pseudo labels and scored, then val."""
from stages.predict_pseudo_labels import PREDICTED_PSEUDO_LABELS
from stages.train_segmentation import TRAIN_SEGMENTATION
from workflows.registry import define_flow, sparse_network_stages

STAGES = sparse_network_stages(TRAIN_SEGMENTATION, PREDICTED_PSEUDO_LABELS)

SPEC = define_flow("partial_ce_voc", [*STAGES.label_stages, STAGES.own_branch],
                   "points/scribbles baseline: segmentation with partial cross-entropy → predictions as pseudo labels, val mIoU")
