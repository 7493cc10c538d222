"""``afa_coco``: AFA (``afa_voc``'s stages) on MS COCO 2014, 81 classes.

The ``paper`` profile is AFA's released COCO run (rulixiang/afa; docs/coco.md has the table with file:line):
configs/coco_attn_reg.yaml with the crop size of launch/run_sbatch_attn_reg_coco.sh, and the warm-ups and PAR of
scripts/dist_train_coco.py.
"""
from workflows.afa_voc import SPEC as AFA_VOC
from workflows.registry import coco_settings, define_flow

#: AFA's COCO settings over ``afa_voc``'s paper profile (the rest — MiT-B1, AdamW 6e-5, warm-up 1500, poly 1,
#: background scores 0.35 / 0.45 / 0.55, CAM scales 1, 0.5, 1.5 — is the same in both configs)
PAPER = {
    # coco_attn_reg.yaml:26 cam_iters 5000; dist_train_coco.py:343 `n_iter <= cam_iters`: classification only
    # through step 5000, then affinity and segmentation at once (as afa_voc's 2001 for VOC's 2000)
    "afa": {"cls_warmup_steps": 5001, "aff_warmup_steps": 5001,
            "seg_propagated_from": 15001,  # dist_train_coco.py:330 `if n_iter <= 15000`: PAR's labels before (VOC: 6000)
            "train": {"steps": 80000,  # coco_attn_reg.yaml:25 max_iters
                      "batch_size": 8,  # coco_attn_reg.yaml:24 samples_per_gpu 2 × run_sbatch_attn_reg_coco.sh:21 4 processes
                      "crop_size": 512}},  # run_sbatch_attn_reg_coco.sh:15 (--crop_size, dist_train_coco.py:436; the yaml says 320)
    "pseudo": {"par": {"num_iter": 15}},  # dist_train_coco.py:230 PAR(num_iter=15) (VOC: 10)
}

SPEC = define_flow("afa_coco", AFA_VOC.stages,
                   "AFA single stage on MS COCO 2014: MiT classifier + affinity from attention + segmentation → seeds, pseudo labels, val mIoU",
                   *coco_settings(AFA_VOC, PAPER))
