"""``sasformer_voc_multistage``: SASFormer's single-stage training, then the shared segmentation stage on its stored
pseudo labels."""
from workflows import sasformer_voc
from workflows.registry import define_flow, retrain_on_pseudo_labels

SPEC = define_flow("sasformer_voc_multistage", retrain_on_pseudo_labels(*sasformer_voc.STAGES),
                   "SASFormer single stage → stored pseudo labels → separate segmentation network (both val mIoUs)",
                   {}, sasformer_voc.PROFILE_DEFAULTS)
