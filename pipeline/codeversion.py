"""The code version of a stage: a digest of its module's source and of every project module it imports.

A stage's cache key includes ``source_digest(stage module)`` (``pipeline.stage.stage_key``), so editing the code
that computes a stage's outputs reruns it, and editing a comment or a docstring does not: the digest is taken over
the module's syntax tree without docstrings. The modules followed are the stage's own and those of the project's
packages (``PACKAGES``) that it imports, directly or not, statically (an ``import`` anywhere in the file, inside
functions too). ``models/__init__.py`` imports every model module at run time; that import is not followed, so a
stage depends on the model modules it names, and on a network it loads from an earlier stage through that stage's key.

>>> len(source_digest("pipeline.metrics"))
16
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the project's packages whose modules a stage's code version follows
PACKAGES = ("pipeline", "models", "stages", "workflows")


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module ``name`` under ``root`` (a module or a package's ``__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def imported_modules(tree: ast.AST, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """The modules of ``packages`` that a syntax tree imports (``from pkg import mod`` names ``pkg.mod`` too), with
    the packages holding them."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    out = set()
    for n in names:
        parts = n.split(".")
        if parts[0] in packages:
            out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


def source_digest(module: str, root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> str:
    """A 16-hex digest of ``module``'s code and of the code of every module of ``packages`` it imports, transitively
    (docstrings, comments and formatting left out). A module without a source file under ``root`` adds its name."""
    return _digest(module, str(root), packages)


@lru_cache(maxsize=None)
def _parsed(path: str, packages: tuple[str, ...]) -> tuple[str, frozenset[str]]:
    tree = _strip_docstrings(ast.parse(Path(path).read_text(), path))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), frozenset(imported_modules(tree, packages))


@lru_cache(maxsize=None)
def _digest(module: str, root: str, packages: tuple[str, ...]) -> str:
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name, Path(root))
        if path is None:
            seen[name] = ""
            continue
        seen[name], imports = _parsed(str(path), packages)
        todo.extend(imports - seen.keys())
    h = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(seen.items())).encode())
    return h.hexdigest()[:16]
