"""Flows by name. A flow module calls ``define_flow`` once: its stages (wired), description and
config defaults; the Prefect flow that runs the stages in order is made here."""
from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from prefect import flow as prefect_flow
from prefect import get_run_logger

from pipeline.config import RunConfigBase, resolve_config
from pipeline.errors import UserError, unknown_flow
from pipeline.parallel import check_executor
from pipeline.runs import Run, RunLock, plan_stages, reuse_stages, stale_stages, summarise, validate_data
from pipeline.runtime import check_runtime
from pipeline.stage import Stage
from workflows.tasks import as_task, publish_summary

FLOWS: dict[str, "FlowSpec"] = {}


@dataclass(frozen=True)
class FlowSpec:
    name: str
    flow: Callable
    stages: list[Stage]
    description: str
    defaults: dict  # the flow's own config defaults, under the profile
    profile_defaults: dict = field(default_factory=dict)  # per profile, over the profile
    launch: Callable | None = None  # the flow with the config as parameters (``define_flow``), for Prefect to start

    def resolve(self, profile: str = "default", sets: list[str] | tuple[str, ...] = (),
                data_root: str | None = None, file: dict | None = None) -> RunConfigBase:
        """This flow's config: defaults ← flow defaults ← profile ← flow's profile defaults ← a config ``file`` ←
        ``data_root`` ← ``--set``."""
        return resolve_config(self.name, profile, sets, self.defaults, data_root, self.profile_defaults, file)


def define_flow(name: str, stages: list[Stage], description: str, defaults: dict | None = None,
                profile_defaults: dict[str, dict] | None = None) -> FlowSpec:
    """Register flow ``name``: a Prefect flow that runs ``stages`` in order, each as a task.

    Every stage's inputs must be wired to stages that come before it in the list.
    """
    earlier: dict[str, Stage] = {}
    for st in stages:
        st.check_wired()
        for role, o in st.sources.items():
            if earlier.get(o.stage.name) is not o.stage:
                raise ValueError(f"flow {name}: {st.name}.{role} reads {o.stage.name}, which does not run before it")
        if st.name in earlier:
            raise ValueError(f"flow {name}: two stages named {st.name}")
        earlier[st.name] = st
    tasks = {st.name: as_task(st) for st in stages}

    @prefect_flow(name=name, description=description)
    def run_flow(run_dir: str, until: str | None = None, force: list[str] | None = None) -> None:
        """Run the stages in the run folder ``run_dir`` (made by ``cli.py run-flow``), up to ``until``; ``force``:
        stages to rerun, with those that depend on them, whatever their records say."""
        run = Run.open(run_dir)
        check_runtime(run.config)  # a missing GPU or Dask scheduler fails here, before any stage
        check_executor(run.config.workers)
        config = run.config.model_dump(mode="json")
        todo, forced = plan_stages(stages, config, until, tuple(force or ()))
        states: dict[str, object] = {}
        try:
            for st in todo:
                ups = [states[u.name] for u in st.upstream(config) if u.name in states]
                states[st.name] = tasks[st.name](run_dir, st.name in forced, return_state=True, wait_for=ups)
                states[st.name].result()  # a failed stage stops the flow
        finally:
            try:
                publish_summary(run, stages)
            except Exception as e:  # an artifact that cannot be written must not hide the stage's own error
                get_run_logger().warning("summary artifact not written: %s", e)

    @prefect_flow(name=f"{name}-from-config", description=f"{description} (the config as parameters)")
    def launch(run_dir: str, profile: str = "default", overrides: dict | None = None, data_root: str | None = None,
               until: str | None = None, force: list[str] | None = None, reuse: list[str] | None = None) -> dict:
        """Flow ``name`` started by Prefect itself (a deployment served by ``cli.py serve``, the UI, ``prefect
        deployment run``): the config is ``profile`` with ``overrides`` (nested config keys, as a --config file holds
        them) and ``data_root``; the run folder is prepared as ``cli.py run-flow`` prepares it (checked, locked,
        validated, described), then the stages run as a subflow. Returns ``inspect --json``'s object."""
        spec = FLOWS[name]
        config = spec.resolve(profile, (), data_root, overrides or {})
        argv = ["prefect", f"{name}-from-config", run_dir]
        run, lock, notes = prepare_run(spec, run_dir, config, argv, overrides or {}, tuple(reuse or ()),
                                       tuple(force or ()), until)
        try:
            for note in notes:
                get_run_logger().info(note)
            run_flow(run_dir=str(Path(run_dir).resolve()), until=until, force=list(force or ()))
            return summarise(run, stages)
        finally:
            lock.release()

    spec = FlowSpec(name, run_flow, list(stages), description, defaults or {}, profile_defaults or {}, launch)
    if name in FLOWS:
        raise ValueError(f"flow {name!r} is defined twice")
    FLOWS[name] = spec
    return spec


def prepare_run(spec: FlowSpec, run_dir: str | Path, config: RunConfigBase, argv: list[str], overrides: dict,
                reuse: tuple[str, ...] = (), force: tuple[str, ...] = (),
                until: str | None = None) -> tuple[Run, RunLock, list[str]]:
    """Make ``run_dir`` ready for ``spec`` under ``config``, writing nothing until everything is checked: the folder
    (``Run.check_folder``), its lock (held on return), the data (``validate_data``); then ``config.yaml`` and
    ``run.json`` (the stage list and ``provenance``), and the stages brought by ``--reuse``. Returns the run, its lock
    and the notes for the user (what was reused, what will be recomputed)."""
    from pipeline.provenance import run_provenance
    from pipeline.runtime import Runtime
    from models.weights import backbone_sections, check_initial_weights
    # a backbone's weights file that is missing, or hub weights that do not exist: one line before anything is written
    check_initial_weights(backbone_sections(config, [r for st in spec.stages for r in st.reads]))
    run_dir = Path(run_dir)
    run = Run(run_dir, config)
    run.check_folder()
    new_folder = not run_dir.exists()
    lock = RunLock(run_dir)
    try:
        if any(st.reads_data for st in spec.stages):
            validate_data(run, spec.stages)
    except BaseException:
        lock.release()
        if new_folder:
            shutil.rmtree(run_dir, ignore_errors=True)  # only the lock file this call made
        raise
    device = str(Runtime.from_config(config).torch_device)
    run.write_description(command=shlex.join(argv), stages=spec.stages,
                          provenance={"provenance": run_provenance(overrides, argv, device)})
    notes = []
    for other in reuse:
        brought = reuse_stages(run, other, spec.stages)
        notes.append(f"reused from {other}: {', '.join(brought) or 'no stage (no key matches)'}")
    todo, _ = plan_stages(spec.stages, config.model_dump(mode="json"), until, force)
    stale = [s for s in stale_stages(run, todo) if s not in force]
    if stale:
        notes.append(f"note: {', '.join(stale)} completed here under another config, code or data; they are recomputed "
                     f"and their outputs replaced (to keep both variants, run in a new --run-dir with --reuse {run_dir})")
    return run, lock, notes


#: every ``*_coco`` flow's data section: MS COCO 2014 (``pipeline/coco.py``; without ``--data-root``, the embedded
#: synthetic data in the COCO layout)
COCO_DATA = {"data": {"dataset": "coco"}}
#: and under the ``paper`` profile: train on train2014, label and score train2014 (AFA configs/coco_attn_reg.yaml:23,
#: ``train: split: train``), evaluate on val2014
COCO_PAPER_DATA = {"data": {"train_split": "train", "label_split": "train", "score_split": None}}


def coco_settings(voc: FlowSpec, paper: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """(defaults, profile defaults) of the MS COCO 2014 twin of the VOC flow ``voc``: its own with the COCO data
    section (``COCO_DATA``; ``COCO_PAPER_DATA`` and the method's COCO settings ``paper`` over its ``paper``
    profile). A ``*_coco`` flow is ``define_flow(NAME, voc.stages, DESCRIPTION, *coco_settings(voc, PAPER))``: the
    same stages, as the class count (81) comes from the data."""
    from pipeline.config import deep_update
    profiles = {p: dict(v) for p, v in voc.profile_defaults.items()}
    profiles["paper"] = deep_update(deep_update(profiles.get("paper", {}), COCO_PAPER_DATA), paper or {})
    return deep_update(voc.defaults, COCO_DATA), profiles


def get_flow(name: str) -> FlowSpec:
    if name not in FLOWS:
        raise unknown_flow(name, FLOWS)
    return FLOWS[name]


def offline_affinity_stages(classifier: Stage, seeds: Stage) -> list[Stage]:
    """The stages of a flow that refines a classifier's seeds offline (ACR's shape, shared by SWTformer), wired:

    classifier → eval_classifier → seeds → eval_seeds → eval_unrefined_seeds (the seed stage's maps before the
    method's own refinement) → train_affinity → random_walk → eval_random_walk → make_pseudo_labels (the walk's maps,
    the guard comparing them with the seeds and the unrefined maps, each at its own threshold) → eval_pseudo_labels
    → train_segmentation → eval_segmentation.
    """
    from pipeline.checkpoint import MODEL_FILE
    from stages.eval_classifier import EVAL_CLASSIFIER
    from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
    from stages.eval_seeds import EVAL_SEEDS, THRESHOLD
    from stages.eval_segmentation import EVAL_SEGMENTATION
    from stages.make_pseudo_labels import MAKE_PSEUDO_LABELS, PSEUDO_LABELS
    from stages.make_seeds import SEEDS, SEEDS_UNREFINED
    from stages.random_walk_seeds import RANDOM_WALK, RW_SEEDS
    from stages.train_affinity import TRAIN_AFFINITY
    from stages.train_segmentation import TRAIN_SEGMENTATION
    affinity = TRAIN_AFFINITY.wire(seeds=seeds.out(SEEDS), unrefined_seeds=seeds.out(SEEDS_UNREFINED))
    seed_scores = EVAL_SEEDS.wire(seeds=seeds.out(SEEDS))
    unrefined_scores = EVAL_SEEDS.named("eval_unrefined_seeds", summary={}).wire(seeds=seeds.out(SEEDS_UNREFINED))
    walk = RANDOM_WALK.wire(seeds=seeds.out(SEEDS), affinity=affinity.out(MODEL_FILE), attention=classifier.out(MODEL_FILE))
    walk_scores = EVAL_SEEDS.named("eval_random_walk", summary={}).wire(seeds=walk.out(RW_SEEDS))
    pseudo = MAKE_PSEUDO_LABELS.wire(scores=walk.out(RW_SEEDS), threshold=walk_scores.out(THRESHOLD),
                                     seeds=seeds.out(SEEDS), seed_threshold=seed_scores.out(THRESHOLD),
                                     unrefined_seeds=seeds.out(SEEDS_UNREFINED), unrefined_threshold=unrefined_scores.out(THRESHOLD))
    segmentation = TRAIN_SEGMENTATION.wire(labels=pseudo.out(PSEUDO_LABELS))
    return [classifier, EVAL_CLASSIFIER.wire(model=classifier.out(MODEL_FILE)), seeds, seed_scores, unrefined_scores, affinity,
            walk, walk_scores, pseudo, EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS), seed_sweep=seed_scores.out(THRESHOLD)),
            segmentation, EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))]


class SparseNetworkStages(NamedTuple):
    """A network trained on the sparse annotations, wired (``sparse_network_stages``)."""

    label_stages: list[Stage]  # sparse store, its score, the training, the pseudo labels and their score
    own_branch: Stage  # the trained network's val score
    pseudo: Stage  # the pseudo-label stage (its store is what a multi-stage variant trains on)


def sparse_network_stages(train: Stage, predict: Stage) -> SparseNetworkStages:
    """The shape of every flow on points/scribbles (``partial_ce_voc``, APro's, SASFormer's), wired:
    ``sparse_labels`` → ``eval_sparse_labels`` → ``train`` (input ``labels``: the sparse store) → ``predict`` (input
    ``model``: the trained network's predictions on ``data.label_split`` as pseudo labels) → ``eval_pseudo_labels``;
    and ``eval_segmentation`` of the trained network on val."""
    from pipeline.checkpoint import MODEL_FILE
    from stages.eval_pseudo_labels import EVAL_PSEUDO_LABELS
    from stages.eval_segmentation import EVAL_SEGMENTATION
    from stages.eval_sparse_labels import EVAL_SPARSE_LABELS
    from stages.make_pseudo_labels import PSEUDO_LABELS
    from stages.sparse_labels import SPARSE_LABELS, SPARSE_LABELS_STAGE
    sparse = SPARSE_LABELS_STAGE.out(SPARSE_LABELS)
    network = train.wire(labels=sparse)
    pseudo = predict.wire(model=network.out(MODEL_FILE))
    label_stages = [SPARSE_LABELS_STAGE, EVAL_SPARSE_LABELS.wire(labels=sparse), network, pseudo,
                    EVAL_PSEUDO_LABELS.wire(labels=pseudo.out(PSEUDO_LABELS))]
    return SparseNetworkStages(label_stages, EVAL_SEGMENTATION.wire(model=network.out(MODEL_FILE)), pseudo)


def retrain_on_pseudo_labels(label_stages: list[Stage], own_branch: Stage, pseudo: Stage) -> list[Stage]:
    """The stages of a single-stage method's multi-stage variant (AFA's, APro's, SASFormer's shape), wired: the
    method's ``label_stages`` (up to its pseudo labels' score), its own network's val score renamed
    ``eval_single_stage_segmentation`` (beside the multi-stage one in ``inspect``), then ``train_segmentation`` on
    ``pseudo``'s stored labels and ``eval_segmentation``."""
    from pipeline.checkpoint import MODEL_FILE
    from stages.eval_segmentation import EVAL_SEGMENTATION
    from stages.make_pseudo_labels import PSEUDO_LABELS
    from stages.train_segmentation import TRAIN_SEGMENTATION
    segmentation = TRAIN_SEGMENTATION.wire(labels=pseudo.out(PSEUDO_LABELS))
    return [*label_stages, own_branch.named("eval_single_stage_segmentation", summary={}), segmentation,
            EVAL_SEGMENTATION.wire(model=segmentation.out(MODEL_FILE))]
