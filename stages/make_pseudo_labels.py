"""Stage ``make_pseudo_labels``: score maps (seeds, random-walk maps) → background threshold → PAR and/or dense CRF → labels.

Scores are [t, CAM_1..CAM_K] with the background score t (``stages.labels.with_background``; t is
``pseudo.bkg_threshold``, or with ``auto`` the threshold that the stage wired to the ``threshold`` input
chose by its label-free rule — ``eval_seeds`` or ``eval_random_walk``, ``stages.eval_seeds.choose_threshold``);
``refine`` applies PAR (``stages.refine.par``) and then a dense CRF (``stages.crf.dense_crf``) to
them; the label is the argmax. With a ``bkg_band`` (low, high) this is done at both scores and
combined by ``stages.labels.reliable_labels`` (foreground from ``high``, background where both agree,
255 between). The ``scores`` input is any store of per-image K×H×W maps with their ``classes``.

No mask is read: every image is labelled by the method's *route* (these maps, refined as ``pseudo.refine`` says).
Only with a calibration split (``pseudo.calibrate``) does the guard (``pseudo.guard``, ``guarded_route``) compare it
with the other routes — the same maps unrefined and, where a flow wires them (``ALTERNATIVE_MAPS``: ACR's seeds
before the walk and its seeds before their affinity refinement), those maps refined and unrefined, each at its own
threshold — on the calibration split's masks alone, and label every image by the best, the method's on a tie.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import CrfConfig, ParConfig
from pipeline.errors import UserError
from pipeline.parallel import map_images, sum_arrays
from pipeline.runtime import resolve_device
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool
from stages.crf import dense_crf
from stages.eval_seeds import PER_IMAGE, calibration, image_otsu_threshold
from stages.evaluate import label_confusion, score_report
from stages.labels import reliable_labels, with_background
from stages.refine import par

PSEUDO_LABELS = "pseudo_labels.zarr"
#: the keys of ``make_pseudo_label`` and of the guard
PSEUDO_READS = ("pseudo.bkg_threshold", "pseudo.bkg_band", "pseudo.refine", "pseudo.par", "pseudo.crf", "pseudo.guard",
                "pseudo.calibrate", "data.label_split", "data.max_images")


def refine_scores(image: np.ndarray, scores: np.ndarray, refine: list[str], par_cfg: ParConfig,
                  crf_cfg: CrfConfig, device: str = "cpu") -> np.ndarray:
    """Apply the refinements named in ``refine`` (``par``, then ``crf``) to (K+1)×H×W scores of one H×W×3 uint8 image.

    PAR runs in torch on ``device`` at ``par_cfg.size`` (the working short side; None: the image's size); the dense
    CRF (pydensecrf) on the CPU, at the image's size.
    """
    if "par" in refine:
        img = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None].to(device)
        p = par_cfg
        scores = par(img, torch.from_numpy(scores)[None].to(device), p.dilations, p.num_iter, p.w_rgb, p.w_pos,
                     p.w_mix, p.size)[0].cpu().numpy()
    if "crf" in refine:
        probs = np.clip(scores, 1e-5, None)
        probs = probs / probs.sum(0, keepdims=True)
        c = crf_cfg
        scores = dense_crf(image, probs, c.n_iter, c.pos_xy_std, c.pos_w, c.bi_xy_std, c.bi_rgb_std, c.bi_w)
    return scores


def make_pseudo_label(image: np.ndarray, cams: np.ndarray, classes: list[int], bkg_threshold: float,
                      bkg_band: tuple[float, float] | None, refine: list[str], par_cfg: ParConfig, crf_cfg: CrfConfig,
                      scores_at: Callable[[float], np.ndarray] | None = None, device: str = "cpu") -> np.ndarray:
    """H×W uint8 pseudo label of one image from its normalised maps (K×H×W) of ``classes`` (PAR on ``device``).

    ``scores_at(t)`` gives the (K+1)×H×W scores for background score t (default: ``with_background``).
    Without a ``bkg_band`` the label is the refined argmax at ``bkg_threshold``; with one, the reliable
    labels of the two ends. An image without a foreground class (``classes`` empty, e.g. COCO's unannotated
    images) is all background: its one score map, the background's, wins everywhere whatever the threshold,
    band or refinement (and the routes' score functions are not called on its 0×H×W maps).
    """
    if len(classes) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    scores_at = scores_at or (lambda t: with_background(cams, t))
    lookup = np.asarray([0, *classes], np.uint8)

    def label_at(t: float) -> np.ndarray:
        return lookup[refine_scores(image, scores_at(t), refine, par_cfg, crf_cfg, device).argmax(0)]

    if bkg_band is None:
        return label_at(bkg_threshold)
    low, high = bkg_band
    return reliable_labels(torch.from_numpy(label_at(high)), torch.from_numpy(label_at(low))).numpy().astype(np.uint8)


def background_threshold(ctx, role: str = "threshold") -> tuple[float | None, str]:
    """The background score of the pseudo labels and where it comes from: ``pseudo.bkg_threshold``, or with
    ``auto`` the threshold in the ``role`` input (``threshold.json`` of ``eval_seeds`` or ``random_walk``: a number, or
    ``PER_IMAGE`` under ``pseudo.bkg_rule: otsu_image``); None with a ``pseudo.bkg_band`` (whose two ends make the
    labels)."""
    p = ctx.config.pseudo
    if p.bkg_band is not None:
        return None, f"pseudo.bkg_band {list(p.bkg_band)}"
    t = p.bkg_threshold
    if t != "auto":
        return float(t), "pseudo.bkg_threshold"
    if not ctx.has_input(role):
        raise UserError(f"pseudo.bkg_threshold=auto: no stage of this flow chooses a threshold for {ctx.stage.name}; "
                        "set a number, e.g. --set pseudo.bkg_threshold=0.25")
    chosen = json.loads(ctx.input(role).read_text())
    t = chosen["threshold"] if chosen["threshold"] == PER_IMAGE else float(chosen["threshold"])
    return t, f"{ctx.input_stage(role)}: {chosen['rule']}"


#: the maps a flow may wire beside ``scores`` for the guard to compare with, each with the input that holds
#: its chosen threshold (an empty store, e.g. ACR's unrefined seeds outside ``grad_aff`` mode, is skipped)
ALTERNATIVE_MAPS = (("seeds", "seed_threshold"), ("unrefined_seeds", "unrefined_threshold"))


def guards(pseudo) -> bool:
    """Whether the guard compares routes: a calibration split (``pseudo.calibrate``) with ``pseudo.guard`` on, and
    dense labels (a ``bkg_band`` leaves pixels unlabelled, which a dense route's score cannot be compared with).
    ``pseudo``: the section, or its JSON dump."""
    get = pseudo.get if isinstance(pseudo, dict) else lambda k: getattr(pseudo, k)
    return bool(get("guard")) and get("calibrate") is not None and get("bkg_band") is None


def uses_threshold(config, role: str = "threshold") -> tuple[str, ...]:
    """The inputs a pseudo-label stage reads beside its maps: the chosen threshold only with ``auto`` and no band."""
    p = config["pseudo"]
    return (role,) if p["bkg_threshold"] == "auto" and p["bkg_band"] is None else ()


def pseudo_label(config: ConfigView, bkg_threshold: float | str | None, image: np.ndarray, cams: np.ndarray, classes: list[int],
                 scores_at: Callable[[float], np.ndarray] | None = None, refine: list[str] | None = None) -> np.ndarray:
    """``make_pseudo_label`` with the run's ``pseudo`` section (``refine`` overrides ``pseudo.refine``) and the
    resolved background threshold (``PER_IMAGE``: this image's own, ``image_otsu_threshold`` of ``cams``), refined on
    the run's device."""
    p = config.pseudo
    if bkg_threshold == PER_IMAGE:  # pseudo.bkg_rule: otsu_image — this image's own threshold of its maps
        bkg_threshold = image_otsu_threshold(cams)
    return make_pseudo_label(image, cams, classes, bkg_threshold, p.bkg_band, p.refine if refine is None else refine,
                             p.par, p.crf, scores_at, str(resolve_device(config.device)))


@dataclass
class Route:
    """One way to label every image: ``labeler(image_id)`` → H×W uint8 label (picklable, for the worker pool).

    ``name`` says which maps at which threshold, refined how (e.g. ``random_walk/rw_seeds (t 0.6) + par``).
    """
    name: str
    labeler: Callable[[str], np.ndarray]
    threshold: float | None
    refine: list[str]
    threshold_from: str = ""
    attrs: dict = field(default_factory=dict)  # what else the store's attrs say about it (e.g. AFA's ``propagated``)

    @staticmethod
    def describe(maps: str, threshold: float | None, refine: list[str]) -> str:
        t = f" (t {threshold})" if isinstance(threshold, str) else f" (t {threshold:g})" if threshold is not None else ""
        return maps + t + "".join(f" + {r}" for r in refine)


def maps_name(ctx, role: str) -> str:
    """The maps of input ``role`` as routes name them: their stage and store, e.g. ``make_seeds/seeds_unrefined``."""
    return f"{ctx.input_stage(role)}/{ctx.input(role).name.removesuffix('.zarr')}"


def route_variants(maps: str, threshold: tuple[float | None, str], refine: list[str],
                   labeler_for: Callable[[list[str]], Callable], attrs: dict | None = None) -> list[Route]:
    """The routes of one set of maps at ``threshold`` (value, where it comes from): refined by ``refine`` and, if
    that refines, unrefined."""
    t, source = threshold
    out = [Route(Route.describe(maps, t, refine), labeler_for(refine), t, list(refine), source, dict(attrs or {}))]
    if refine:
        out.append(Route(Route.describe(maps, t, []), labeler_for([]), t, [], source, dict(attrs or {})))
    return out


@dataclass
class RouteScores:
    """Per image: the C×C confusion of every route's label against the mask (R×C×C)."""
    root: Path
    labelers: list

    def __call__(self, image_id: str) -> np.ndarray:
        folder = VOCFolder(self.root)
        gt = folder.mask(image_id)
        return np.stack([label_confusion(image_id, gt, label(image_id), folder.num_classes) for label in self.labelers])


def choose_route(mious: list[float | None]) -> int:
    """The route to label with: the best mIoU, the earliest (the method's) on a tie; 0 when nothing was scored.

    >>> choose_route([0.30, 0.33, 0.33]), choose_route([0.3, 0.3]), choose_route([None, None])
    (1, 0, 0)
    """
    best = 0
    for i, m in enumerate(mious):
        if m is not None and (mious[best] is None or m > mious[best]):
            best = i
    return best


def chosen_before(ctx, routes: list[Route]) -> tuple[Route, dict] | None:
    """On a resumed stage, the route (and the guard's metrics) its store was started with under this key, so
    that a resumed store never mixes two routes; None for a new store."""
    path = ctx.output(PSEUDO_LABELS)
    if not (path / "zarr.json").is_file():
        return None
    attrs = LabelStore(path).attrs
    guard = attrs.get("guard_metrics")
    by_name = {r.name: r for r in routes}
    if attrs.get("key") != ctx.key or not guard or guard.get("route") not in by_name:
        return None
    return by_name[guard["route"]], guard


def guarded_route(ctx, routes: list[Route], maps: LabelStore) -> tuple[Route, dict]:
    """The route that labels every image (module docstring): ``routes[0]`` (the method's) unless a calibration split
    is named (``pseudo.calibrate``, with ``pseudo.guard``) and another route scores higher on its masks among the
    images with ``maps``; with the metrics that say why. A resumed stage keeps the route it started with
    (``chosen_before``)."""
    cfg = ctx.config
    before = chosen_before(ctx, routes)
    if before is not None:
        return before
    cal = calibration(ctx)
    if cal is None:
        return routes[0], {"route": routes[0].name, "guard": "the method's route (no calibration split: no mask read)"}
    if not cfg.pseudo.guard:
        return routes[0], {"route": routes[0].name, "guard": "off (pseudo.guard=false)"}
    if len(routes) == 1:
        why = "pseudo.bkg_band labels are not dense" if cfg.pseudo.bkg_band is not None else "no other route"
        return routes[0], {"route": routes[0].name, "guard": f"nothing to compare ({why})"}
    ids = [i for i in cal if i in maps]  # calibration images with a mask and maps (no other mask is touched)
    conf = sum_arrays(map_images(RouteScores(ctx.run.voc_root, [r.labeler for r in routes]), ids, image_pool(ctx),
                                 f"{ctx.stage.name} guard"))
    mious = [score_report(c)["miou"] for c in conf]
    mious = [None if m is None or np.isnan(m) else round(float(m), 5) for m in mious]
    best = choose_route(mious)
    rule = (f"best mIoU of {len(routes)} routes on the {len(ids)} masks of calibration split {cfg.pseudo.calibrate.split}; "
            + ("the method's route" if best == 0 else f"the method's route ({routes[0].name}) scored {mious[0]}, below"))
    return routes[best], {"route": routes[best].name, "guard": rule, "routes": {r.name: m for r, m in zip(routes, mious)},
                          "calibration": {"split": cfg.pseudo.calibrate.split, "images": len(ids)}}


@dataclass
class MapLabeler:
    """The pseudo label of one image from stored maps at background score ``threshold``, refined by ``refine``."""
    config: ConfigView
    root: Path
    scores: Path
    threshold: float | None
    refine: list[str]

    def __call__(self, image_id: str) -> np.ndarray:
        scores = LabelStore(self.scores)
        image = VOCFolder(self.root).image(image_id)
        return pseudo_label(self.config, self.threshold, image, scores.read(image_id), scores.read_attrs(image_id)["classes"],
                            refine=self.refine)


@dataclass
class WriteLabels:
    """Write one image's label from ``labeler`` into the store at ``out`` (atomically, per image)."""
    labeler: Callable[[str], np.ndarray]
    out: Path

    def __call__(self, image_id: str) -> None:
        LabelStore(self.out).write(image_id, self.labeler(image_id))


def write_route(ctx, route: Route, guard: dict, ids: list[str]) -> dict:
    """Label ``ids`` by ``route`` into ``pseudo_labels.zarr`` (its attrs: the route, threshold, refinement and the
    guard's metrics); returns the stage's metrics."""
    store, done = fill_store(ctx, PSEUDO_LABELS, {"kind": "labels", "route": route.name, "refine": route.refine,
                                                  "threshold": route.threshold, "guard_metrics": guard, **route.attrs},
                             ids, lambda out: WriteLabels(route.labeler, out), image_pool(ctx))
    return {"images": len(store), "resumed_from": done, "threshold": route.threshold,
            "threshold_from": route.threshold_from, **route.attrs, **guard}


def run(ctx) -> dict:
    cfg = ctx.config
    scores = LabelStore(ctx.input("scores"))

    def routes_of(role: str, threshold_role: str) -> list[Route]:
        store, threshold = LabelStore(ctx.input(role)), background_threshold(ctx, threshold_role)
        return route_variants(maps_name(ctx, role), threshold, list(cfg.pseudo.refine),
                              lambda r: MapLabeler(cfg, ctx.run.voc_root, store.path, threshold[0], r))

    routes = routes_of("scores", "threshold")
    if not guards(cfg.pseudo):
        routes = routes[:1]
    else:  # the maps before the method's refinements, each at its own threshold
        for maps, threshold in ALTERNATIVE_MAPS:
            if ctx.has_input(maps) and len(LabelStore(ctx.input(maps))):
                routes += routes_of(maps, threshold)
    route, guard = guarded_route(ctx, routes, scores)
    return {"scores": ctx.input_stage("scores"), **write_route(ctx, route, guard, scores.ids())}


def uses(config) -> tuple[str, ...]:
    """The inputs that ``config`` makes ``make_pseudo_labels`` read (the alternative maps only for the guard)."""
    alternatives = (tuple(role for maps, threshold in ALTERNATIVE_MAPS for role in (maps, *uses_threshold(config, threshold)))
                    if guards(config["pseudo"]) else ())
    return ("scores", *uses_threshold(config), *alternatives)


MAKE_PSEUDO_LABELS = Stage("make_pseudo_labels", run, reads=PSEUDO_READS,
                           writes=(PSEUDO_LABELS,), inputs=("scores",), optional=("threshold", *(role for pair in ALTERNATIVE_MAPS for role in pair)),
                           uses=uses, version=3,  # 2: the guard; 3: the guard only on a calibration split
                           description="background threshold, PAR, CRF (the method's route; with a calibration split the best on its masks) → pseudo_labels.zarr")
