"""``apro_voc_multistage``: APro's single-stage training, then the shared segmentation stage on its stored pseudo labels."""
from workflows import apro_voc
from workflows.registry import define_flow, retrain_on_pseudo_labels

SPEC = define_flow("apro_voc_multistage", retrain_on_pseudo_labels(*apro_voc.STAGES),
                   "APro single stage → stored pseudo labels → separate segmentation network (both val mIoUs)",
                   {}, apro_voc.PROFILE_DEFAULTS)
