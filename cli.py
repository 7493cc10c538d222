"""Command line of the WSSS pipeline: ``python cli.py --help``."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from pipeline.errors import UserError, unknown_flow  # noqa: E402


class Failure(click.ClickException):
    """One line on stderr and a non-zero exit."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _guard(fn):
    """Turn user errors (and, without --debug, any error) into one line and a non-zero exit."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if debug:
                raise
            raise Failure(str(e)) from None
        except (click.ClickException, click.exceptions.Exit, KeyboardInterrupt):
            raise
        except Exception as e:
            if debug:
                raise
            raise Failure(f"{type(e).__name__}: {e} (run again with --debug for the traceback)") from None
    return wrapper


def _quiet_prefect_tracebacks() -> None:
    """Without --debug, Prefect's failure logs keep their message but lose the traceback."""
    def strip(record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        for h in logging.getLogger(name).handlers:
            h.addFilter(strip)


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
def main(debug: bool) -> None:
    """Weak labels → dense pseudo masks through cached, inspectable stages (Prefect flows)."""


def flow_catalog() -> list[tuple[str, str]]:
    """(name, description) of every flow, read from the ``define_flow(NAME, STAGES, DESCRIPTION, ...)`` calls in
    ``workflows/`` without importing them (no torch, no Prefect: ``list-flows`` answers at once)."""
    import ast
    out = []
    for path in sorted((ROOT / "workflows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "define_flow" and len(node.args) >= 3:
                name, desc = node.args[0], node.args[2]
                if isinstance(name, ast.Constant) and isinstance(desc, ast.Constant):
                    out.append((name.value, desc.value))
    return out


@main.command("list-flows")
def list_flows() -> None:
    """Names and one-line descriptions of the flows."""
    for name, description in flow_catalog():
        click.echo(f"{name:24s} {description}")


@main.command("run-flow", context_settings={"show_default": True})
@click.argument("name", required=False)
@click.option("--data-root", type=click.Path(), default=None, help="VOC2012 folder (default: the embedded synthetic data).")
@click.option("--run-dir", type=click.Path(), default=None, help="Run folder (default: runs/NAME-PROFILE).")
@click.option("--profile", type=click.Choice(["smoke", "default", "paper"]), default=None,
              help="Profile (default: the --config file's, else default).")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="A YAML config as --show-config prints it (any subset of its keys); --set applies on top.")
@click.option("--from-run", "from_run", type=click.Path(), default=None,
              help="Reproduce a run: its flow and config (run.json, config.yaml); --set applies on top.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (dotted path); repeatable.")
@click.option("--until", default=None, metavar="STAGE", help="Stop after this stage.")
@click.option("--force", multiple=True, metavar="STAGE", help="Rerun this stage and those that depend on it; repeatable.")
@click.option("--reuse", "reuse", multiple=True, metavar="RUN_DIR",
              help="Bring in the completed stages of another run whose keys match (linked or copied, not recomputed).")
@click.option("--show-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@_guard
def run_flow(name, data_root, run_dir, profile, config_file, from_run, sets, until, force, reuse, show_config) -> None:
    """Run flow NAME; the same command again resumes (unchanged stages are cached)."""
    if name is not None and not from_run and name not in (known := [n for n, _ in flow_catalog()]):
        raise unknown_flow(name, known)  # at once: before the seconds of importing torch, timm and Prefect
    from workflows import get_flow  # every flow and config section registered
    from pipeline.config import deep_update, load_config_file
    file = None
    if from_run:
        from pipeline import records
        desc = records.read_run_description(Path(from_run))
        if name not in (None, desc["flow"]):
            raise UserError(f"--from-run {from_run} is a run of {desc['flow']!r}, not {name!r}: drop NAME or give another run")
        name, file = desc["flow"], load_config_file(str(Path(from_run) / "config.yaml"))
    if config_file:
        file = load_config_file(config_file) if file is None else deep_update(file, load_config_file(config_file))
    if name is None:
        raise UserError("run-flow needs a flow NAME (or --from-run RUN_DIR): `python cli.py list-flows` lists them")
    profile = profile or (file or {}).get("profile") or "default"
    spec = get_flow(name)
    cfg = spec.resolve(profile, sets, data_root, file)
    if show_config:
        click.echo(cfg.to_yaml(), nl=False)
        return
    from pipeline.runs import plan_stages
    from pipeline.runtime import check_runtime
    runtime = check_runtime(cfg)  # before anything is written
    from pipeline.parallel import check_executor
    check_executor(cfg.workers)
    plan_stages(spec.stages, cfg.model_dump(mode="json"), until, tuple(force))  # unknown stage names: one line
    from pipeline import distributed
    if distributed.join_launched_group(runtime) and distributed.launched_world()[0] > 0:
        distributed.follow()  # under torchrun: rank 0 runs the flow, this rank trains its share
        return
    run_dir = Path(run_dir or f"runs/{name}-{profile}")
    from pipeline.config import parse_set
    from workflows.registry import prepare_run
    argv = ["python", "cli.py", *sys.argv[1:]]
    run, _lock, notes = prepare_run(spec, run_dir, cfg, argv, deep_update(file or {}, parse_set(sets)), tuple(reuse),
                                    tuple(force), until)  # the lock is held until this process ends
    for note in notes:
        click.echo(note, err=True)
    if not click.get_current_context().find_root().params.get("debug"):
        _quiet_prefect_tracebacks()
    from pipeline.progress import on_terminal
    if not on_terminal():  # nohup, SLURM: stage lines and progress in the log
        from pipeline.orchestration import log_runs_at_info
        log_runs_at_info()
    try:
        # absolute: a Dask worker elsewhere reads the same paths
        spec.flow(run_dir=str(run_dir.resolve()), until=until, force=list(force))
    except UserError:
        raise
    except Exception as e:
        failed = _failed_stage(run, spec)
        if failed is None:
            raise
        raise Failure(f"stage {failed[0]} failed: {failed[1]} (details in {run_dir}/stages/{failed[0]}/record.json)") from e
    distributed.end_followers()
    _print_table(run_info(run_dir), per_class=False)


def _failed_stage(run, spec):
    for st in spec.stages:
        rec = run.read_record(st.name)
        if rec and rec.get("status") == "failed":
            return st.name, rec.get("error", "")
    return None


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


_SHOWN = ("miou", "best_threshold_miou", "best_threshold", "map", "threshold", "route", "coverage", "pixel_acc", "val_accuracy", "images", "final_loss", "steps", "resumed_from")


def _print_table(info: dict, per_class: bool) -> None:
    """``inspect``'s tables from its JSON object (``pipeline.records.summarise``)."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.voc import class_names_of
    console = Console()
    t = Table(title=f"{info['flow']} — {info['run_dir']}")
    for col in ("stage", "status", "seconds", "metrics"):
        t.add_column(col)
    for s in info["stages"]:
        m = "  ".join(f"{k}={_fmt(s['metrics'][k])}" for k in _SHOWN if k in s["metrics"])
        if "progress" in s:
            m = f"running: {s['progress'].get('done')}/{s['progress'].get('total')} {s['progress'].get('unit', '')}  " + m
        t.add_row(s["name"], s["status"], _fmt(s["seconds"]), m)
    console.print(t)
    console.print("summary: " + "  ".join(f"{k}={_fmt(v)}" for k, v in info["summary"].items() if k != "calibration"))
    from pipeline.records import calibration_text
    console.print("labels: " + (calibration_text(info["summary"].get("calibration"))
                                or "no mask read (thresholds and route by label-free rules)"))
    if per_class:
        for s in info["stages"]:
            if "iou" not in s["metrics"]:
                continue
            pc = Table(title=f"{s['name']} per class")
            for col in ("class", "IoU", "FP", "FN"):
                pc.add_column(col)
            m = s["metrics"]
            names = class_names_of(len(m["iou"]))  # VOC's 21 or COCO's 81
            for c, name in enumerate(names):
                if m.get("present", [True] * len(names))[c]:
                    pc.add_row(name, _fmt(m["iou"][c]), _fmt(m["fp"][c]), _fmt(m["fn"][c]))
            console.print(pc)


def _open_run(run_dir):
    from pipeline.runs import Run
    from workflows import get_flow
    run = Run.open(run_dir)
    return run, get_flow(run.flow_name())


def run_info(run_dir) -> dict:
    """``inspect --json``'s object for ``run_dir``: from ``run.json``'s stage list and the records alone (no torch, no
    Prefect), or, for a folder from before ``run.json`` listed its stages, through the flow's definition."""
    from pipeline import records
    desc = records.read_run_description(Path(run_dir))
    if "stages" in desc:
        return records.summarise(Path(run_dir), desc["flow"], desc["stages"])
    from pipeline.runs import summarise
    run, spec = _open_run(run_dir)
    return summarise(run, spec.stages)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--per-class", is_flag=True, help="Per-class IoU, FP and FN of every evaluation stage.")
@click.option("--json", "as_json", is_flag=True, help="One strict JSON object (see docs/reference.md).")
@_guard
def inspect(run_dir, per_class, as_json) -> None:
    """Every stage of a run with status, time and metrics (a running stage: its progress)."""
    info = run_info(run_dir)
    if as_json:
        click.echo(json.dumps(info, allow_nan=False))
    else:
        _print_table(info, per_class)


@main.command("make-synthetic")
@click.argument("out_dir", type=click.Path())
@click.option("--train", "n_train", default=200, show_default=True)
@click.option("--val", "n_val", default=60, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--style", type=click.Choice(["a", "b"]), default="a", show_default=True,
              help="a: the embedded default; b: a second, independent generator (to check that defaults transfer).")
@click.option("--min-size", default=96, show_default=True, type=click.IntRange(32), help="Smallest image side (pixels).")
@click.option("--max-size", default=144, show_default=True, type=click.IntRange(32), help="Largest image side (pixels).")
@click.option("--format", "fmt", type=click.Choice(["voc", "coco"]), default="voc", show_default=True,
              help="voc: OUT_DIR/VOC2012; coco: OUT_DIR in the official COCO 2014 layout (train2014/, val2014/, "
              "annotations/instances_*2014.json with the 80 categories).")
@_guard
def make_synthetic_cmd(out_dir, n_train, n_val, seed, style, min_size, max_size, fmt) -> None:
    """Write the synthetic dataset in VOC layout (OUT_DIR/VOC2012) or COCO 2014 layout (OUT_DIR); print its root."""
    from pipeline.synthetic import make_synthetic, make_synthetic_coco
    write = make_synthetic_coco if fmt == "coco" else make_synthetic
    if min_size > max_size:
        raise UserError(f"--min-size {min_size} is above --max-size {max_size}: give min <= max")
    root = write(Path(out_dir), n_train, n_val, seed, min_size, max_size, style=style)
    click.echo(str(root))


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--stage", default=None, help="make_seeds / make_pseudo_labels (training images) or an evaluation stage "
              "(its predictions on val); a training stage draws its curves.")
@click.option("--out", type=click.Path(), required=True, help="PNG to write.")
@click.option("--num", default=6, show_default=True, help="Images (rows).")
@_guard
def show(run_dir, stage, out, num) -> None:
    """Draw image | ground truth | seed | pseudo label | prediction overlays (VOC palette)."""
    from stages.visualise import draw_run
    run, spec = _open_run(run_dir)
    names = [s.name for s in spec.stages]
    stage = stage or ("make_pseudo_labels" if "make_pseudo_labels" in names else "eval_segmentation")
    if stage not in names:
        raise UserError(f"flow {spec.name} has no stage {stage!r}: choose one of {', '.join(names)}")
    draw_run(run, stage, Path(out), num)
    click.echo(out)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--stage", required=True, help="The stage whose label store to export (make_pseudo_labels, sparse_labels, "
              "eval_segmentation, …).")
@click.option("--store", default=None, help="The store's name when the stage writes several (e.g. pseudo_labels.zarr).")
@click.argument("out", type=click.Path())
@_guard
def export(run_dir, stage, store, out) -> None:
    """A stage's labels as VOC palette PNGs (OUT/<id>.png, 255 kept) and a split list, as mmsegmentation and
    DeepLab trainers read them."""
    from pipeline import records
    from pipeline.export import export_labels
    desc = records.read_run_description(Path(run_dir))
    folder = Path(run_dir) / "stages" / stage
    stores = sorted(p.name for p in folder.glob("*.zarr") if (p / "zarr.json").is_file()) if folder.is_dir() else []
    if not stores:
        names = ", ".join(s["name"] for s in desc.get("stages", [])) or "see inspect"
        raise UserError(f"stage {stage!r} of {run_dir} holds no label store: choose a stage that stores labels ({names})")
    if store is None and len(stores) > 1:
        raise UserError(f"stage {stage} holds several stores ({', '.join(stores)}): choose one with --store")
    store = store or stores[0]
    if store not in stores:
        raise UserError(f"stage {stage} holds no store {store!r}: choose one of {', '.join(stores)}")
    import yaml
    config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    # an evaluation stage stores its predictions on the segmentation's eval split, the others label data.label_split
    split = config["segmentation"]["eval_split"] if stage.startswith("eval_") else config["data"]["label_split"]
    n = export_labels(folder / store, Path(out), split, {"run_dir": str(Path(run_dir).resolve()), "stage": stage})
    click.echo(f"{n} labels → {out} (list {split}.txt)")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--stage", default=None, help="The evaluation stage whose per-class IoU to compare (default: "
              "eval_segmentation, else the last one every run scored).")
@click.option("--json", "as_json", is_flag=True, help="One strict JSON object.")
@click.option("--out", type=click.Path(), default=None, help="A PNG of grouped bar charts (summary and per class).")
@_guard
def compare(run_dirs, stage, as_json, out) -> None:
    """Runs side by side: summary mIoUs, seconds, the config keys in which they differ, per-class IoU."""
    import yaml

    from pipeline.compare import COLUMNS, compare_runs
    infos = [run_info(d) for d in run_dirs]
    configs = [yaml.safe_load((Path(d) / "config.yaml").read_text()) for d in run_dirs]
    result = compare_runs(infos, configs, stage)
    if out:
        from pipeline.plots import plot_comparison
        plot_comparison(result, Path(out))
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table
    from pipeline.progress import on_terminal
    console = Console() if on_terminal() else Console(width=400)  # a log or a file: whole columns, never cut
    t = Table(title="runs")  # one row per run, as an ablation table; the keys in which they differ as columns
    heads = {"seed_miou": "seed", "pseudo_miou": "pseudo", "pseudo_coverage": "coverage", "seg_miou": "seg",
             "cls_map": "cls mAP"}
    for col in ("run", "flow", *result["differing_keys"], *(heads[k] for k in COLUMNS), "seconds"):
        t.add_column(col, overflow="fold")
    for r in result["runs"]:
        run_name = r["run_dir"] + (f" ({r['labels']})" if r.get("calibration") else "")  # a calibrated run is marked
        t.add_row(run_name, r["flow"], *(_fmt(r["config"][k]) for k in result["differing_keys"]),
                  *(_fmt(r["summary"][k]) for k in COLUMNS), f"{r['seconds']:.0f}")
    console.print(t)
    if result["stage"]:
        pc = Table(title=f"{result['stage']}: IoU per class")
        pc.add_column("class")
        for r in result["runs"]:
            pc.add_column(Path(r["run_dir"]).name)
        for c in result["runs"][0]["per_class"]:
            vals = [r["per_class"][c] for r in result["runs"]]
            if any(v is not None for v in vals):
                pc.add_row(c, *(_fmt(v) for v in vals))
        console.print(pc)
    if out:
        console.print(f"chart: {out}")


@main.command()
@click.argument("name")
@click.option("--deployment", default=None, help="The deployment's name (default: NAME).")
@_guard
def serve(name, deployment) -> None:
    """Serve flow NAME as a Prefect deployment whose parameters are the config (run_dir, profile, overrides,
    data_root, until, force, reuse): runs started from Prefect's UI or `prefect deployment run` execute here."""
    from workflows import get_flow
    spec = get_flow(name)
    spec.launch.serve(name=deployment or name)


@main.command("docs-config")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if docs/configuration.md is stale.")
@_guard
def docs_config(check) -> None:
    """Regenerate docs/configuration.md from the config sections and the flows (pipeline/docgen.py)."""
    from pipeline.docgen import COMMAND, PAGE, write_page
    from workflows import FLOWS  # importing the flows registers every config section
    current = write_page(ROOT, FLOWS.values(), check=check)
    if check and not current:
        raise Failure(f"{PAGE} is stale: run `{COMMAND}` and commit it")
    click.echo(f"{PAGE}: {'up to date' if current else 'rewritten'}")


@main.command("check-weights")
@click.argument("file", type=click.Path())
@click.option("--flow", "flow_name", required=True, help="The flow whose backbones the file is checked against.")
@click.option("--profile", type=click.Choice(["smoke", "default", "paper"]), default="paper", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (dotted path); repeatable.")
@click.option("--section", "only", multiple=True, metavar="NAME", help="Check only this backbone section; repeatable.")
@_guard
def check_weights_cmd(file, flow_name, profile, sets, only) -> None:
    """What weights FILE gives each backbone of a flow: layout, matched / missing / unexpected / mis-shaped tensors.

    Exit 0 when the file fits every --section named, or (without --section) at least one backbone; 1 otherwise."""
    from workflows import get_flow
    from models.weights import backbone_sections, weights_file
    from models.weights_check import check_weights
    spec = get_flow(flow_name)
    cfg = spec.resolve(profile, sets)
    sections = backbone_sections(cfg, [r for st in spec.stages for r in st.reads])
    unknown = [s for s in only if s not in sections]
    if unknown:
        raise UserError(f"--section {unknown[0]}: {flow_name} has no such backbone section (it has {', '.join(sections)})")
    sections = {k: v for k, v in sections.items() if not only or k in only}
    if not weights_file(file).is_file():
        raise UserError(f"weights file {file} does not exist")
    crop = getattr(getattr(cfg, "train_classifier", None), "crop_size", 384)
    matches = check_weights(file, sections, crop)
    click.echo(f"{file}: checked against the backbones of {flow_name} ({profile})")
    for name, m in matches.items():
        click.echo(f"{name}.weights → {sections[name].backbone}: {'fits' if m.ok else 'does NOT fit'}")
        for line in m.report():
            click.echo(line)
    fits = [n for n, m in matches.items() if m.ok]
    click.echo(f"fits: {', '.join(fits) or 'no backbone of ' + flow_name}")
    if not (all(m.ok for m in matches.values()) if only else fits):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
