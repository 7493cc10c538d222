"""The stage catalogue: each stage's function, config sections and inputs, and its Prefect task."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.config import AFAConfig
from pipeline.runs import Run, Stage, run_stage
from stages import (afa_pseudo_labels, eval_pseudo_labels, eval_seeds, eval_segmentation, make_pseudo_labels, make_seeds,
                    random_walk_seeds, train_affinity, train_classifier, train_segmentation, train_single_stage)

_SEG_TRAIN = ("segmentation.backbone", "segmentation.pretrained", "segmentation.weights", "segmentation.head",
              "segmentation.output_stride", "segmentation.train", "seed", "data.train_split", "data.label_split",
              "data.max_images")
_SEG_EVAL = ("segmentation.eval_scales", "segmentation.eval_flip", "segmentation.eval_crf", "segmentation.eval_split",
             "pseudo.crf", "data.max_images")

_PSEUDO = ("pseudo.bkg_threshold", "pseudo.ignore_band", "pseudo.refine", "pseudo.par", "pseudo.crf")
_SEEDS = ("cam.scales", "cam.flip", "cam.mode", "cam.layers", "cam.aff_layers", "data.label_split", "data.max_images")

TRAIN_CLASSIFIER = Stage("train_classifier", train_classifier.run,
                         ("model", "train_classifier", "acr", "seed", "data.train_split", "data.max_images"),
                         description="multi-label ViT classifier on image-level labels (ACR: + attention consistency)")
MAKE_SEEDS = Stage("make_seeds", make_seeds.run, _SEEDS, ("train_classifier",),
                   description="multi-scale CAM / gradient-attention score maps → seeds.zarr")
TRAIN_AFFINITY = Stage("train_affinity", train_affinity.run,
                       ("affinity.source", "affinity.backbone", "affinity.pretrained", "affinity.weights", "affinity.dims",
                        "affinity.radius", "affinity.label_seeds", "affinity.label_band", "affinity.label_refine",
                        "affinity.train", "pseudo.par", "pseudo.crf", "seed", "data.score_split"),
                       ("make_seeds",), description="AffinityNet (PSA) on confident labels from the unrefined seeds")
RANDOM_WALK = Stage("random_walk", random_walk_seeds.run,
                    ("affinity.source", "affinity.radius", "affinity.beta", "affinity.log_t", "affinity.attention_layers",
                     "cam.sweep", "data.score_split"),
                    ("make_seeds", "train_affinity", "train_classifier"),
                    description="seeds propagated by the random walk over the affinity → rw_seeds.zarr")
EVAL_SEEDS = Stage("eval_seeds", eval_seeds.run, ("cam.sweep", "data.score_split"), ("make_seeds",),
                   description="seed mIoU at the best background threshold, FP/FN")
MAKE_PSEUDO_LABELS = Stage("make_pseudo_labels", make_pseudo_labels.run, _PSEUDO, ("make_seeds",),
                           description="background threshold, PAR, CRF → pseudo_labels.zarr")
MAKE_PSEUDO_LABELS_FROM_RW = Stage("make_pseudo_labels", make_pseudo_labels.run, _PSEUDO, ("random_walk",),
                                   description="random-walk maps → background threshold, PAR, CRF → pseudo_labels.zarr")
EVAL_PSEUDO_LABELS = Stage("eval_pseudo_labels", eval_pseudo_labels.run, ("data.score_split",), ("make_pseudo_labels",),
                           description="pseudo-label mIoU and coverage")
TRAIN_SEG_ON_PSEUDO = Stage("train_segmentation", train_segmentation.run, _SEG_TRAIN, ("make_pseudo_labels",),
                            description="segmentation network on the stored pseudo labels")
TRAIN_SEG_ON_GT = Stage("train_segmentation", train_segmentation.run, _SEG_TRAIN,
                        description="segmentation network on ground-truth masks")
#: every ``afa`` key but the one that only the pseudo-label stage reads
_AFA_TRAIN = tuple(f"afa.{k}" for k in AFAConfig.model_fields if k != "propagate")
TRAIN_SINGLE_STAGE = Stage("train_single_stage", train_single_stage.run,
                           (*_AFA_TRAIN, "pseudo.par", "seed", "data.train_split", "data.max_images"),
                           description="AFA: classification, affinity from attention and segmentation trained at once")
MAKE_SEEDS_FROM_AFA = Stage("make_seeds", make_seeds.run, _SEEDS, ("train_single_stage",),
                            description="multi-scale CAM of the single-stage network → seeds.zarr")
MAKE_AFA_PSEUDO_LABELS = Stage("make_pseudo_labels", afa_pseudo_labels.run,
                               _PSEUDO + ("afa.affinity", "afa.propagate", "afa.radius", "afa.power", "afa.log_t"),
                               ("make_seeds", "train_single_stage"),
                               description="seeds propagated over the learned affinity, PAR (CRF) → pseudo_labels.zarr")
EVAL_SINGLE_STAGE_SEGMENTATION = Stage("eval_segmentation", eval_segmentation.run, _SEG_EVAL, ("train_single_stage",),
                                       description="the single-stage network's segmentation branch on val, mIoU")
EVAL_SEGMENTATION = Stage("eval_segmentation", eval_segmentation.run, _SEG_EVAL, ("train_segmentation",),
                          description="multi-scale (+CRF) inference on val, mIoU")


def _artifact_key(run: Run, stage: str) -> str:
    return f"{run.flow_name()}-{stage}".lower().replace("_", "-")


def publish_metrics(run: Run, stage: str, record: dict) -> None:
    """The stage's scalar metrics as a Prefect table artifact."""
    rows = [{"metric": k, "value": v} for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float, str))]
    rows.insert(0, {"metric": "status", "value": record["status"]})
    create_table_artifact(table=rows, key=_artifact_key(run, stage), description=f"{stage} of {run.dir}")


def as_task(stage: Stage):
    """A Prefect task running ``stage`` in the run folder (cached by the run's own records)."""

    @task(name=stage.name, description=stage.description, cache_policy=NO_CACHE, persist_result=False)
    def _run(run_dir: str) -> str:
        run = Run.open(run_dir)
        record = run_stage(run, stage)
        publish_metrics(run, stage.name, record)
        return record["status"]

    return _run
