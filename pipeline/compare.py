"""Runs side by side: what ablation tables are made of (``cli.py compare``).

``compare_runs`` takes each run's ``inspect`` object and resolved config and returns one object: per run its
summary (seed / pseudo / coverage / seg / cls mAP), its total seconds, the values of the config keys in which the
runs differ, and the per-class IoU of one evaluation stage; ``differing_keys`` lists those keys. A run whose labelling
read masks (``pseudo.calibrate``) carries ``calibration`` ({"split", "images"}) and its ``labels`` text says so
("calibrated on 50 images of train"); the others read "no mask read".
"""
from __future__ import annotations

from typing import Any

from pipeline.records import calibration_text, finite
from pipeline.voc import CLASS_NAMES, class_names_of

#: the summary columns, in the order a table shows them
COLUMNS = ("seed_miou", "pseudo_miou", "pseudo_coverage", "seg_miou", "cls_map")
#: keys that name a run rather than configure it
NOT_COMPARED = ("flow",)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(configs: list[dict]) -> list[str]:
    """The dotted keys whose values are not the same in every config (a key missing from one counts as differing).

    >>> differing_keys([{"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}])
    ['b.c']
    """
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    return [k for k in keys if k not in NOT_COMPARED and len({repr(f.get(k, missing)) for f in flat}) > 1]


def eval_stage(infos: list[dict], stage: str | None = None) -> str | None:
    """The evaluation stage whose per-class IoU is compared: ``stage``, else ``eval_segmentation`` when every run has
    scored it, else the last stage with per-class IoU that every run has."""
    if stage is not None:
        return stage
    scored = [[s["name"] for s in info["stages"] if "iou" in s["metrics"]] for info in infos]
    common = [n for n in scored[0] if all(n in other for other in scored[1:])] if scored else []
    return "eval_segmentation" if "eval_segmentation" in common else (common[-1] if common else None)


def compare_runs(infos: list[dict], configs: list[dict], stage: str | None = None) -> dict:
    """The comparison of runs given their ``inspect`` objects and resolved configs (same order)."""
    keys = differing_keys(configs)
    stage = eval_stage(infos, stage)
    runs = []
    for info, config in zip(infos, configs):
        flat = flatten(config)
        scored = next((s for s in info["stages"] if s["name"] == stage), None)
        iou = (scored or {}).get("metrics", {}).get("iou")
        names = class_names_of(len(iou)) if iou else CLASS_NAMES  # VOC's 21 or COCO's 81
        present = (scored or {}).get("metrics", {}).get("present", [True] * len(names))
        runs.append({
            "run_dir": info["run_dir"], "flow": info["flow"],
            "calibration": info["summary"].get("calibration"),
            "labels": calibration_text(info["summary"].get("calibration")) or "no mask read",
            "summary": {k: info["summary"].get(k) for k in COLUMNS},
            "seconds": round(sum(s["seconds"] or 0.0 for s in info["stages"] if s["status"] in ("completed", "cached")), 1),
            "config": {k: flat.get(k) for k in keys},
            "per_class": {name: (iou[c] if iou and present[c] else None) for c, name in enumerate(names)},
        })
    return finite({"stage": stage, "differing_keys": keys, "runs": runs})
