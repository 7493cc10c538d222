"""Stage ``make_pseudo_labels``: score maps (seeds, random-walk maps) → background threshold → PAR and/or dense CRF → labels.

Scores are [t, CAM_1..CAM_K] with the background score t (``stages.labels.with_background``; t is
``pseudo.bkg_threshold``, or with ``auto`` the threshold that the stage wired to the ``threshold`` input
chose — ``eval_seeds`` or ``random_walk``, ``stages.eval_seeds.choose_threshold``);
``refine`` applies PAR (``stages.refine.par``) and then a dense CRF (``stages.crf.dense_crf``) to
them; the label is the argmax. With a ``bkg_band`` (low, high) this is done at both scores and
combined by ``stages.labels.reliable_labels`` (foreground from ``high``, background where both agree,
255 between). The ``scores`` input is any store of per-image K×H×W maps with their ``classes``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import CrfConfig, ParConfig
from pipeline.errors import UserError
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import fill_store
from stages.crf import dense_crf
from stages.labels import reliable_labels, with_background
from stages.refine import par

PSEUDO_LABELS = "pseudo_labels.zarr"
#: the keys of ``make_pseudo_label``
PSEUDO_READS = ("pseudo.bkg_threshold", "pseudo.bkg_band", "pseudo.refine", "pseudo.par", "pseudo.crf")


def refine_scores(image: np.ndarray, scores: np.ndarray, refine: list[str], par_cfg: ParConfig,
                  crf_cfg: CrfConfig) -> np.ndarray:
    """Apply the refinements named in ``refine`` (``par``, then ``crf``) to (K+1)×H×W scores of one H×W×3 uint8 image."""
    if "par" in refine:
        img = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
        p = par_cfg
        scores = par(img, torch.from_numpy(scores)[None], p.dilations, p.num_iter, p.w_rgb, p.w_pos, p.w_mix)[0].numpy()
    if "crf" in refine:
        probs = np.clip(scores, 1e-5, None)
        probs = probs / probs.sum(0, keepdims=True)
        c = crf_cfg
        scores = dense_crf(image, probs, c.n_iter, c.pos_xy_std, c.pos_w, c.bi_xy_std, c.bi_rgb_std, c.bi_w)
    return scores


def make_pseudo_label(image: np.ndarray, cams: np.ndarray, classes: list[int], bkg_threshold: float,
                      bkg_band: tuple[float, float] | None, refine: list[str], par_cfg: ParConfig, crf_cfg: CrfConfig,
                      scores_at: Callable[[float], np.ndarray] | None = None) -> np.ndarray:
    """H×W uint8 pseudo label of one image from its normalised maps (K×H×W) of ``classes``.

    ``scores_at(t)`` gives the (K+1)×H×W scores for background score t (default: ``with_background``).
    Without a ``bkg_band`` the label is the refined argmax at ``bkg_threshold``; with one, the reliable
    labels of the two ends.
    """
    scores_at = scores_at or (lambda t: with_background(cams, t))
    lookup = np.asarray([0, *classes], np.uint8)

    def label_at(t: float) -> np.ndarray:
        return lookup[refine_scores(image, scores_at(t), refine, par_cfg, crf_cfg).argmax(0)]

    if bkg_band is None:
        return label_at(bkg_threshold)
    low, high = bkg_band
    return reliable_labels(torch.from_numpy(label_at(high)), torch.from_numpy(label_at(low))).numpy().astype(np.uint8)


def background_threshold(ctx) -> tuple[float | None, str]:
    """The background score of the pseudo labels and where it comes from: ``pseudo.bkg_threshold``, or with
    ``auto`` the threshold in the ``threshold`` input (``threshold.json`` of ``eval_seeds`` or ``random_walk``);
    None with a ``pseudo.bkg_band`` (whose two ends make the labels)."""
    p = ctx.config.pseudo
    if p.bkg_band is not None:
        return None, f"pseudo.bkg_band {list(p.bkg_band)}"
    t = p.bkg_threshold
    if t != "auto":
        return float(t), "pseudo.bkg_threshold"
    if not ctx.has_input("threshold"):
        raise UserError(f"pseudo.bkg_threshold=auto: no stage of this flow chooses a threshold for {ctx.stage.name}; "
                        "set a number, e.g. --set pseudo.bkg_threshold=0.25")
    chosen = json.loads(ctx.input("threshold").read_text())
    return float(chosen["threshold"]), f"{ctx.input_stage('threshold')}: {chosen['rule']}"


def uses_threshold(config) -> tuple[str, ...]:
    """The inputs a pseudo-label stage reads beside its maps: the chosen threshold only with ``auto`` and no band."""
    p = config["pseudo"]
    return ("threshold",) if p["bkg_threshold"] == "auto" and p["bkg_band"] is None else ()


def pseudo_label(config: ConfigView, bkg_threshold: float | None, image: np.ndarray, cams: np.ndarray, classes: list[int],
                 scores_at: Callable[[float], np.ndarray] | None = None) -> np.ndarray:
    """``make_pseudo_label`` with the run's ``pseudo`` section and the resolved background threshold."""
    p = config.pseudo
    return make_pseudo_label(image, cams, classes, bkg_threshold, p.bkg_band, p.refine, p.par, p.crf, scores_at)


@dataclass
class PseudoLabelWorker:
    config: ConfigView
    bkg_threshold: float | None
    root: Path
    scores: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        scores = LabelStore(self.scores)
        image = VOCFolder(self.root).image(image_id)
        label = pseudo_label(self.config, self.bkg_threshold, image, scores.read(image_id), scores.read_attrs(image_id)["classes"])
        LabelStore(self.out).write(image_id, label)


def run(ctx) -> dict:
    cfg = ctx.config
    t, source = background_threshold(ctx)
    scores = LabelStore(ctx.input("scores"))
    store, done = fill_store(ctx, PSEUDO_LABELS, {"kind": "labels", "refine": list(cfg.pseudo.refine), "threshold": t},
                             scores.ids(), lambda out: PseudoLabelWorker(cfg, t, ctx.run.voc_root, scores.path, out),
                             cfg.pseudo.workers)
    return {"images": len(store), "resumed_from": done, "scores": ctx.input_stage("scores"), "threshold": t,
            "threshold_from": source}


MAKE_PSEUDO_LABELS = Stage("make_pseudo_labels", run, reads=PSEUDO_READS,
                           writes=(PSEUDO_LABELS,), inputs=("scores",), optional=("threshold",),
                           uses=lambda config: ("scores", *uses_threshold(config)),
                           description="background threshold, PAR, CRF → pseudo_labels.zarr")
