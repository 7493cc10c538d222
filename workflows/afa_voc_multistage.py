"""``afa_voc_multistage``: AFA's single-stage training, then the shared segmentation stage on its stored pseudo labels."""
from pipeline.config import deep_update
from workflows import afa_voc
from workflows.registry import define_flow, retrain_on_pseudo_labels

SPEC = define_flow(
    "afa_voc_multistage", retrain_on_pseudo_labels(afa_voc.LABEL_STAGES, afa_voc.OWN_BRANCH, afa_voc.PSEUDO),
    "AFA single stage → stored pseudo labels → separate segmentation network (both val mIoUs)",
    afa_voc.DEFAULTS,
    # afa_voc's own settings (so the first stages are shared, cached, between the two flows); in ``default`` the
    # separate segmentation network trains for half the shared 1200 steps, to keep the flow within 15 minutes
    deep_update(afa_voc.PROFILE_DEFAULTS, {"default": {"segmentation": {"train": {"steps": 600}}}}))
