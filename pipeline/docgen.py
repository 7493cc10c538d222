"""``docs/configuration.md``, generated from the registered config sections: every key with its type (as the code
writes it), its range (read from the pydantic model), its default, what each profile sets it to, and its comment (the
``Field(description=...)`` or the ``# ...`` comment beside or above the key in the section's source); then what
every flow sets.

Nothing here imports a model or a flow: the caller registers the sections (``import workflows`` registers them all)
and hands the flows over. One command rewrites the page, and ``--check`` fails when it is stale::

    python cli.py docs-config            # rewrite docs/configuration.md
    python cli.py docs-config --check    # exit 1 if the page is not what the code gives

>>> from pipeline.config import DataConfig
>>> field_comments(DataConfig)["root"]
'None: the embedded synthetic dataset'
>>> describe_range(int, [annotated_types.Ge(1)])
'integer ≥ 1'
"""
from __future__ import annotations

import ast
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, PlainValidator, WrapValidator
from pydantic.fields import FieldInfo

from pipeline.config import BASE_PROFILES, PROFILE_NAMES, RunConfigBase, deep_update, run_config_type, sections

#: the page, relative to the repository root
PAGE = Path("docs") / "configuration.md"
#: the command that rewrites it (named in the page and in the stale-page message)
COMMAND = "python cli.py docs-config"


# ------------------------------------------------------------------------------------------- reading the source


@lru_cache(maxsize=None)
def _class_source(cls: type) -> tuple[ast.ClassDef, dict[int, str], list[str]] | None:
    """The class's syntax tree, its comments by line (1-based within the class source) and its lines."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    tree = ast.parse(src)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return None
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                if tok.type == tokenize.COMMENT}
    return node, comments, src.splitlines()


def _clean(comment: str) -> str:
    return comment.lstrip("#:").strip()


def _key_nodes(cls: type) -> dict[str, ast.AnnAssign]:
    found = _class_source(cls)
    if found is None:
        return {}
    node = found[0]
    return {n.target.id: n for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _segment(lines: list[str], node: ast.AST) -> str:
    """The source text of ``node`` (``ast.get_source_segment`` without re-splitting the source at every call);
    column offsets are in UTF-8 bytes."""
    first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
    chunk = [line.encode() for line in lines[first:last + 1]]
    if first == last:
        return chunk[0][node.col_offset:node.end_col_offset].decode()
    chunk[0], chunk[-1] = chunk[0][node.col_offset:], chunk[-1][:node.end_col_offset]
    return b"\n".join(chunk).decode()


@lru_cache(maxsize=None)
def field_comments(cls: type[BaseModel]) -> dict[str, str]:
    """Each key of ``cls`` (its own and inherited) → its comment: the ``# ...`` lines right above the key (no blank
    line between) followed by the ``# ...`` at the end of its line(s). A key declared in a base class takes that
    class's comment."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found = _class_source(klass) if isinstance(klass, type) and issubclass(klass, BaseModel) else None
        if found is None:
            continue
        _, comments, lines = found
        for name, n in _key_nodes(klass).items():
            above = []
            line = n.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, _clean(comments.get(line, lines[line - 1])))
                line -= 1
            trailing = [_clean(comments[i]) for i in range(n.lineno, (n.end_lineno or n.lineno) + 1) if i in comments]
            text = "; ".join(p for p in (" ".join(above), " ".join(trailing)) if p)
            if text or name not in out:
                out[name] = text
    return out


@lru_cache(maxsize=None)
def field_types(cls: type[BaseModel]) -> dict[str, str]:
    """Each key of ``cls`` → its annotation as the source writes it (``Count | None``, ``BkgBand``)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found = _class_source(klass) if isinstance(klass, type) and issubclass(klass, BaseModel) else None
        if found is None:
            continue
        lines = found[2]
        for name, n in _key_nodes(klass).items():
            out[name] = _segment(lines, n.annotation)
    return out


def _type_names(annotation_text: str) -> set[str]:
    try:
        tree = ast.parse(annotation_text, mode="eval")
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def alias_glossary(modules: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Module-level type aliases with a ``#:`` comment in ``modules``: name → (its definition, its comment)."""
    out: dict[str, tuple[str, str]] = {}
    for mod_name in sorted(set(modules)):
        mod = sys.modules.get(mod_name)
        try:
            src = inspect.getsource(mod) if mod is not None else ""
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        for n in ast.parse(src).body:
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                doc, line = [], n.lineno - 1
                while line >= 1 and lines[line - 1].strip().startswith("#:"):
                    doc.insert(0, _clean(lines[line - 1]))
                    line -= 1
                if doc:
                    out.setdefault(n.targets[0].id, (_segment(lines, n.value), " ".join(doc)))
    return out


# --------------------------------------------------------------------------------------------------- ranges

_VALIDATORS = (AfterValidator, BeforeValidator, PlainValidator, WrapValidator)


def _num(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def _bounds(metadata: Iterable[Any]) -> tuple[list[Any], list[str]]:
    """(the numeric/length constraints, the names of the validators) in a field's or an Annotated's metadata."""
    flat: list[Any] = []
    for m in metadata:
        flat.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    funcs = [m.func for m in flat if isinstance(m, _VALIDATORS)]
    return flat, [(f.func if isinstance(f, partial) else f).__qualname__ for f in funcs]


def _interval(flat: list[Any]) -> str:
    lo = next(((m.ge, "[") for m in flat if isinstance(m, annotated_types.Ge)), None) or \
        next(((m.gt, "(") for m in flat if isinstance(m, annotated_types.Gt)), None)
    hi = next(((m.le, "]") for m in flat if isinstance(m, annotated_types.Le)), None) or \
        next(((m.lt, ")") for m in flat if isinstance(m, annotated_types.Lt)), None)
    if lo and hi:
        return f"{lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
    if lo:
        return f"{'≥' if lo[1] == '[' else '>'} {_num(lo[0])}"
    if hi:
        return f"{'≤' if hi[1] == ']' else '<'} {_num(hi[0])}"
    return ""


def _length(flat: list[Any]) -> str:
    lo = next((m.min_length for m in flat if isinstance(m, annotated_types.MinLen)), None)
    hi = next((m.max_length for m in flat if isinstance(m, annotated_types.MaxLen)), None)
    if lo is not None and hi is not None:
        return f"{lo}–{hi} items"
    if lo is not None:
        return f"at least {lo} item{'s' if lo != 1 else ''}"
    if hi is not None:
        return f"at most {hi} items"
    return ""


def describe_range(tp: Any, metadata: Iterable[Any] = ()) -> str:
    """The values ``tp`` (with a field's ``metadata``) accepts, in words: ``integer ≥ 1``, ``number in [0, 1]``,
    ``one of a, b``, ``list of number > 0 (at least 1 item)``, ``text or null``; a validator is named
    (``checked by f``)."""
    flat, checks = _bounds(metadata)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(tp)
        return describe_range(base, [*extra, *flat])
    if origin in (Union, types.UnionType):
        text = " or ".join(dict.fromkeys(describe_range(a, flat) if a is not type(None) else "null"
                                         for a in typing.get_args(tp)))
    elif origin is Literal:
        text = "one of " + ", ".join(a if isinstance(a, str) else json.dumps(a) for a in typing.get_args(tp))
    elif origin in (list, tuple, set):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [describe_range(a) for a in args]
        length = _length(flat)
        if origin is tuple and len(args) > 1:
            text = f"({', '.join(items)})"
        else:
            text = f"list of {items[0] if items else 'values'}" + (f" ({length})" if length else "")
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        text = "section"
    else:
        bound = _interval(flat)
        text = _plain(tp) + (f" {'in ' if bound[:1] in '[(' else ''}{bound}" if bound else "")
        if _length(flat):
            text += f" ({_length(flat)})"
    return "; ".join([text, *(f"checked by `{c}`" for c in checks)])


def _plain(tp: Any) -> str:
    return {int: "integer", float: "number", str: "text", bool: "true or false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp)))


# ------------------------------------------------------------------------------------------------ the page


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(v: Any) -> str:
    return "required" if v is REQUIRED else f"`{json.dumps(v, ensure_ascii=False)}`"


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else k) if isinstance(v, dict) and v else {f"{prefix}.{k}" if prefix else k: v})
    return out


def _rows(model: type[BaseModel], defaults: dict, profiles: dict[str, dict], prefix: str = "") -> list[tuple[str, ...]]:
    comments, texts = field_comments(model), field_types(model)
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = info.annotation
        comment = info.description or comments.get(name, "")
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append((f"`{key}`", f"`{texts.get(name) or ann.__name__}`", "section", "", "",
                         comment or _doc(ann)))
            rows += _rows(ann, defaults.get(name, {}), {p: v.get(name, {}) for p, v in profiles.items()}, key + ".")
            continue
        default = defaults.get(name)
        sub = _optional_section(ann)
        by_profile = "; ".join(f"{p}: {_value(v[name])}" for p, v in profiles.items() if name in v and v[name] != default)
        rows.append((f"`{key}`", f"`{texts.get(name) or _plain(ann)}`", describe_range(ann, info.metadata),
                     _value(default), by_profile, comment or (_doc(sub) if sub else "")))
        if sub is not None:  # a section that may be null: its keys, with their own defaults (REQUIRED when none)
            sub_defaults = {n: (f.get_default(call_default_factory=True) if not f.is_required() else REQUIRED)
                            for n, f in sub.model_fields.items()}
            sub_defaults = {n: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for n, v in sub_defaults.items()}
            rows += _rows(sub, default if isinstance(default, dict) else sub_defaults,
                          {p: v[name] for p, v in profiles.items() if isinstance(v.get(name), dict)}, key + ".")
    return rows


class _Required:
    def __repr__(self) -> str:
        return "required"


#: the default shown for a key that has none (a key of a section that may be null, which must be given when it is set)
REQUIRED = _Required()


def _optional_section(ann: Any) -> type[BaseModel] | None:
    """The section type of a ``Section | None`` key (None for any other annotation)."""
    if typing.get_origin(ann) in (Union, types.UnionType):
        models = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    head = ["| key | type | range | default | profiles | comment |", "|---|---|---|---|---|---|"]
    return head + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]


def _doc(cls: type) -> str:
    """The first paragraph of the class's own docstring (not one inherited from pydantic's BaseModel)."""
    doc = cls.__dict__.get("__doc__") or ""
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else ""


def _module_path(mod_name: str) -> str:
    return mod_name.replace(".", "/") + ".py"


def configuration_page(flows: Iterable[Any] = ()) -> str:
    """The page's text: the base keys, every registered section (alphabetical, so the order does not depend on
    which module was imported first), the type aliases they use, then each of ``flows``' own settings (objects with
    ``name``, ``defaults`` and ``profile_defaults``, as ``workflows.FLOWS``' values)."""
    config_type = run_config_type()
    defaults = config_type().model_dump(mode="json")
    resolved = {p: deep_update(defaults, {**BASE_PROFILES.get(p, {}),
                                          **{n: s.profiles[p] for n, s in sections().items() if p in s.profiles}})
                for p in PROFILE_NAMES}
    specs = dict(sorted(sections().items()))
    lines = [
        "# Configuration",
        "",
        f"<!-- generated by `{COMMAND}` from the config sections (pipeline/config.py and every `@config_section`); "
        "do not edit by hand -->",
        "",
        "Every key of a run's config, as `run-flow NAME --show-config` prints it and `--set KEY=VALUE` sets it (dotted "
        "path). A config is resolved in layers: the defaults below, the flow's own defaults, the profile's overrides "
        "(column *profiles*), the flow's settings for that profile ([Flows](#what-each-flow-sets)), a `--config` file, "
        "then `--set`. *type* is the annotation as the code writes it (the aliases are under "
        "[Types](#types)); *range* is what the model accepts (anything else is refused with one line); *profiles* "
        "lists only the profiles that change the default. The comments are the code's.",
        "",
        f"This page is generated: `{COMMAND}` rewrites it, `{COMMAND} --check` fails when it is stale (a test runs "
        "it).",
        "",
        "Sections: " + ", ".join(f"[`{n}`](#{n})" for n in specs) + ".",
        "",
        "## Top-level keys",
        "",
        f"Declared in `pipeline/config.py` (`{RunConfigBase.__name__}`).",
        "",
    ]
    base_fields = set(RunConfigBase.model_fields)
    lines += _table([r for r in _rows(RunConfigBase, defaults, {p: {k: v for k, v in resolved[p].items() if k in base_fields}
                                                                     for p in PROFILE_NAMES})])
    used: set[str] = set(_type_names_of(RunConfigBase))
    for name, spec in specs.items():
        doc = _doc(spec.type)
        lines += ["", f"## {name}", "", f"`{spec.type.__name__}`, registered in `{_module_path(spec.type.__module__)}`."
                  + (f" {doc}" if doc else ""), ""]
        lines += _table(_rows(spec.type, defaults[name], {p: resolved[p][name] for p in PROFILE_NAMES}, f"{name}."))
        used |= _type_names_of(spec.type)
    glossary = alias_glossary({"pipeline.config", *(s.type.__module__ for s in specs.values())})
    lines += ["", "## Types", "", "The aliases the keys' types use (`pipeline/config.py` unless named).", "",
              "| alias | definition | meaning |", "|---|---|---|"]
    lines += [f"| `{a}` | `{_cell(glossary[a][0])}` | {_cell(glossary[a][1])} |" for a in sorted(used & set(glossary))]
    lines += ["", "## What each flow sets", "",
              "A flow's own defaults (*every profile*) and its settings for one profile, over the profile's.", ""]
    for flow in sorted(flows, key=lambda f: f.name):
        rows: dict[str, dict[str, Any]] = {}
        for key, v in _leaves(flow.defaults).items():
            rows.setdefault(key, {})["every profile"] = v
        for p in PROFILE_NAMES:
            for key, v in _leaves(flow.profile_defaults.get(p, {})).items():
                rows.setdefault(key, {})[p] = v
        lines += [f"### {flow.name}", ""]
        if not rows:
            lines += ["Nothing: the defaults and the profiles as above.", ""]
            continue
        cols = ["every profile", *PROFILE_NAMES]
        lines += ["| key | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| `{k}` | " + " | ".join(_cell(_value(r[c])) if c in r else "" for c in cols) + " |"
                  for k, r in rows.items()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _type_names_of(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names |= _type_names(field_types(model).get(name, ""))
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= _type_names_of(info.annotation)
    return names


def write_page(root: Path, flows: Iterable[Any], check: bool = False) -> bool:
    """Write ``root/docs/configuration.md`` (or, with ``check``, only compare); True when the file was current."""
    path = Path(root) / PAGE
    text = configuration_page(flows)
    current = path.exists() and path.read_text() == text
    if not check and not current:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return current
