"""``cam_coco``: the ViT CAM baseline (``cam_voc``'s stages) on MS COCO 2014, 81 classes."""
from workflows.cam_voc import SPEC as CAM_VOC
from workflows.registry import coco_settings, define_flow

SPEC = define_flow("cam_coco", CAM_VOC.stages,
                   "ViT CAM baseline on MS COCO 2014: classifier → CAM seeds → PAR/CRF pseudo labels → segmentation",
                   *coco_settings(CAM_VOC))
