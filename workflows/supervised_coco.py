"""``supervised_coco``: segmentation on COCO 2014's masks (built from the instances) — the upper bound of the weak flows."""
from workflows.registry import coco_settings, define_flow
from workflows.supervised_voc import SPEC as SUPERVISED_VOC

SPEC = define_flow("supervised_coco", SUPERVISED_VOC.stages,
                   "fully supervised upper bound on MS COCO 2014 (81 classes)",
                   *coco_settings(SUPERVISED_VOC))
