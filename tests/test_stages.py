"""Stages declare what they read and write: cache keys follow the declarations, and a stage cannot read
a key it does not declare. Flows only wire stages; imports run one way."""
import ast
import copy
import pickle
from pathlib import Path

import pytest

from pipeline.stage import DATA_KEYS, ConfigView, UndeclaredConfigRead, stage_key
from workflows import FLOWS, get_flow

ROOT = Path(__file__).resolve().parents[1]


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k


def _set(d, dotted, value):
    node = d
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


def _under(leaf, keys):
    return any(leaf == k or leaf.startswith(k + ".") for k in keys)


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_stage_key_changes_with_every_key_it_reads_and_no_other(flow):
    """For every leaf of the config and every stage: the key changes iff the stage, or a stage it reads
    from (directly or not), declares the leaf — or the leaf names the dataset."""
    spec = get_flow(flow)
    base = spec.resolve("smoke").model_dump(mode="json")
    before = {s.name: stage_key(s, base, "fingerprint") for s in spec.stages}
    leaves = list(_leaves(base))
    assert len(leaves) > 100
    for leaf in leaves:
        changed = copy.deepcopy(base)
        _set(changed, leaf, ["changed", leaf])
        for s in spec.stages:
            chain = [s, *s.upstream(base)]
            depends = (any(st.reads_data for st in chain) and _under(leaf, DATA_KEYS)) or any(_under(leaf, st.reads) for st in chain)
            moved = stage_key(s, changed, "fingerprint") != before[s.name]
            assert moved == depends, f"{flow}: {s.name}'s key {'moved' if moved else 'stayed'} when {leaf} changed"
    # and with the data: a new fingerprint moves every key of a stage that reads it (or reads one that does)
    for s in spec.stages:
        moved = stage_key(s, base, "other data") != before[s.name]
        assert moved == any(st.reads_data for st in [s, *s.upstream(base)]), s.name


def test_performance_knobs_move_no_key():
    spec = get_flow("acr_voc")
    base = spec.resolve("smoke").model_dump(mode="json")
    changed = copy.deepcopy(base)
    changed["pseudo"]["workers"] = 7
    changed["flow"], changed["profile"] = "other", "paper"
    assert all(stage_key(s, base, "f") == stage_key(s, changed, "f") for s in spec.stages)


@pytest.mark.parametrize("flow", ["cam_voc", "afa_voc", "acr_voc"])  # acr_voc: its random-walk maps
def test_a_fixed_threshold_frees_the_pseudo_labels_from_the_threshold_stage(flow):
    """With a number (or a band) the pseudo labels do not read the chosen threshold: changing how it is
    chosen moves their key only under auto."""
    spec = get_flow(flow)
    pseudo = next(s for s in spec.stages if s.name == "make_pseudo_labels")
    for sets, moves in (([], True), (["pseudo.bkg_threshold=0.3"], False), (["pseudo.bkg_band=[0.1, 0.4]"], False)):
        cfg = spec.resolve("smoke", sets).model_dump(mode="json")
        wider = copy.deepcopy(cfg)
        wider["cam"]["sweep"] = [0.005, *cfg["cam"]["sweep"]]
        assert (stage_key(pseudo, cfg, "f") != stage_key(pseudo, wider, "f")) == moves, (flow, sets)


def test_the_guard_reads_the_seeds_before_the_walk_only_when_it_compares_routes():
    """acr_voc's pseudo labels use the seeds and ACR* seeds and their thresholds for the guard only, which compares
    routes only on a calibration split (pseudo.calibrate); calibrating moves the key."""
    spec = get_flow("acr_voc")
    pseudo = next(s for s in spec.stages if s.name == "make_pseudo_labels")
    both = {"seeds", "unrefined_seeds"}
    cal = "pseudo.calibrate.split=calib"
    for sets, used in (([], {"scores", "threshold"}),
                       ([cal], {"scores", "threshold", "seed_threshold", "unrefined_threshold", *both}),
                       ([cal, "pseudo.guard=false"], {"scores", "threshold"}),
                       ([cal, "pseudo.bkg_band=[0.1, 0.4]"], {"scores"}),
                       ([cal, "pseudo.bkg_threshold=0.3"], {"scores", *both})):
        assert set(pseudo.used_sources(spec.resolve("smoke", sets).model_dump(mode="json"))) == used, sets
    on, off = (spec.resolve("smoke", s).model_dump(mode="json") for s in ([cal], []))
    assert stage_key(pseudo, on, "f") != stage_key(pseudo, off, "f")


def test_flows_share_stages_they_wire_alike():
    """afa_voc_multistage reuses afa_voc's stored stages: the same keys under the same config."""
    a, m = get_flow("afa_voc"), get_flow("afa_voc_multistage")
    cfg = a.resolve("smoke").model_dump(mode="json")
    for s in a.stages[:5]:
        twin = next(t for t in m.stages if t.name == s.name)
        assert stage_key(s, cfg, "f") == stage_key(twin, cfg, "f")


def test_a_stage_cannot_read_a_key_it_does_not_declare():
    cfg = get_flow("cam_voc").resolve("smoke")
    view = ConfigView(cfg, ("cam.scales", "pseudo.par"), "make_seeds")
    assert view.cam.scales == [1.0] and view.pseudo.par.num_iter == 10
    # the execution knobs, readable by every stage and in no key
    assert (view.workers.processes, view.device, view.devices) == (cfg.workers.processes, "auto", 1)
    with pytest.raises(UndeclaredConfigRead, match="'amp'"):  # mixed precision changes results: declared
        view.amp
    with pytest.raises(UndeclaredConfigRead, match=r"make_seeds reads config key 'cam.flip'"):
        view.cam.flip
    with pytest.raises(UndeclaredConfigRead, match="'segmentation'"):
        view.segmentation
    with pytest.raises(UndeclaredConfigRead, match="'pseudo'"):
        view.pseudo.model_dump()
    assert view.pseudo.par.model_dump() == cfg.pseudo.par.model_dump()
    # per-image workers get the view pickled: the same values, the same limits
    again = pickle.loads(pickle.dumps(view.pseudo))
    assert again.par.dilations == cfg.pseudo.par.dilations
    with pytest.raises(UndeclaredConfigRead):
        again.bkg_threshold


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_input_is_wired_to_a_declared_output_of_an_earlier_stage(flow):
    seen = {}
    for s in get_flow(flow).stages:
        for role, o in s.sources.items():
            assert o.name in o.stage.writes, (s.name, role)
            assert seen.get(o.stage.name) is o.stage, (s.name, role, o.stage.name)
        seen[s.name] = s


LAYERS = {"pipeline": 0, "models": 1, "stages": 2, "workflows": 3, "cli": 4}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_imports_run_one_way():
    """pipeline ← models ← stages ← workflows ← cli: no module imports a layer above its own."""
    bad = []
    for top, level in LAYERS.items():
        files = [ROOT / "cli.py"] if top == "cli" else sorted((ROOT / top).rglob("*.py"))
        for f in files:
            bad += [f"{f.relative_to(ROOT)} imports {m}" for m in _imports(f) if LAYERS.get(m.split(".")[0], -1) > level]
    assert not bad, bad


#: a method's modules; shared stages are written against models.protocols and know none of them
METHOD_MODULES = ("models.acr", "models.afa", "models.token_views", "models.mix_transformer", "stages.acr_seeds",
                  "stages.afa_labels", "stages.afa_pseudo_labels", "stages.train_acr_classifier", "stages.train_single_stage",
                  "models.apro", "stages.train_apro", "stages.apro_pseudo_labels", "models.swtformer", "stages.train_swtformer",
                  "stages.swtformer_seeds")
SHARED_STAGES = ("make_seeds", "make_pseudo_labels", "eval_seeds", "eval_pseudo_labels", "eval_segmentation",
                 "train_segmentation", "common", "evaluate", "labels", "random_walk_seeds", "train_affinity",
                 "sparse_labels", "eval_sparse_labels", "predict_pseudo_labels")


@pytest.mark.parametrize("module", SHARED_STAGES)
def test_shared_stages_know_no_method(module):
    text = (ROOT / "stages" / f"{module}.py").read_text()
    assert not [m for m in _imports(ROOT / "stages" / f"{module}.py") if m in METHOD_MODULES]
    for word in ("vit_acr", "afa_mit", '"acr"', '"afa"', '"apro"', "apro.", "swtformer"):
        assert word not in text, (module, word)


def test_a_later_key_at_its_old_value_keeps_old_keys():
    """``train.brightness_shift`` came after runs existed: at 0 a stage key is the one a config without it gives (those
    runs stay cached); any other value moves it."""
    spec = get_flow("supervised_voc")
    base = spec.resolve("smoke").model_dump(mode="json")
    seg = spec.stages[0]
    old = copy.deepcopy(base)
    del old["segmentation"]["train"]["brightness_shift"]
    assert base["segmentation"]["train"]["brightness_shift"] == 0.0
    assert stage_key(seg, base, "f") == stage_key(seg, old, "f")
    base["segmentation"]["train"]["brightness_shift"] = 10.0
    assert stage_key(seg, base, "f") != stage_key(seg, old, "f")
