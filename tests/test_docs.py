"""The documentation: a short README whose Quick start is what CI runs, links that lead somewhere, and a
configuration page that cannot drift from the config models."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: the Quick start's two commands, verbatim: the first trains the main flow on the embedded data, the second runs the
#: tests (CI runs it: .ci/run)
QUICK_START = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python cli.py run-flow cam_voc',
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q',
)


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README has no '## {heading}' section"
    return m.group(1)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail to docs/ (at most 300)"


def test_quick_start_is_the_two_commands_ci_runs():
    block = re.search(r"```\w*\n(.*?)```", _section(README.read_text(), "Quick start"), re.S)
    assert block, "the Quick start has no code block"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert tuple(commands) == QUICK_START
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    ci_command = ci[-1]
    # the same words, but that CI's pip runs quietly (`pip install -q -e ".[test]"`)
    quiet_pip = ci_command.replace("pip install -q ", "pip install ")
    assert shlex.split(quiet_pip) == shlex.split(QUICK_START[1]), "the README's test command is not what .ci/run runs"


# ------------------------------------------------------------------------------------------------------ links

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    return _CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens.

    >>> slug("The researcher's loop")
    'the-researchers-loop'
    >>> slug("ACR (`acr_voc`)")
    'acr-acr_voc'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a page offers: its headings' (GitHub numbers repeats -1, -2, ...) and explicit ids."""
    text = _FENCE.sub("", path.read_text())
    out: set[str] = set()
    seen: dict[str, int] = {}
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    out |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def _links(path: Path):
    for target in _LINK.findall(_prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "there.md").write_text("# Here\n## Two words\n")
    page.write_text("[a](there.md#two-words) [b](there.md#nowhere) [c](missing.md) `[d](inline-code.md)`\n"
                    "```\n[e](fenced.md)\n```\n[f](https://example.org)\n")
    targets = list(_links(page))
    assert targets == ["there.md#two-words", "there.md#nowhere", "missing.md"]
    assert anchors(tmp_path / "there.md") == {"here", "two-words"}


def test_the_index_lists_every_page():
    index = (ROOT / "docs" / "index.md").read_text()
    listed = {Path(t.partition("#")[0]).name for t in _links(ROOT / "docs" / "index.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "index.md" and p.name not in listed]
    assert not missing, f"docs/index.md does not link {missing}"
    assert "index.md" in {Path(t.partition("#")[0]).name for t in _links(README)}, "README does not link docs/index.md"
    assert index.startswith("# ")


# -------------------------------------------------------------------------------------------- configuration


@pytest.fixture(scope="module")
def config_page():
    import workflows  # registers every flow and every config section
    from pipeline.docgen import configuration_page
    return configuration_page(workflows.FLOWS.values())


def test_configuration_page_is_current(config_page):
    from pipeline.docgen import COMMAND, PAGE
    on_disk = (ROOT / PAGE).read_text() if (ROOT / PAGE).exists() else ""
    assert on_disk == config_page, f"{PAGE} is stale (a config key, its comment or a profile changed): run `{COMMAND}`"


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def test_configuration_page_has_every_key_with_default_range_and_comment(config_page):
    """Every key ``--show-config`` prints has a row (walked on the resolved config, not through the generator); a few
    rows checked by hand against pipeline/config.py."""
    from pipeline.config import run_config_type
    keys_part = config_page.split("\n## Types\n")[0]  # the flows' tables below repeat keys
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*$", keys_part, re.M)}
    missing = [k for k in _leaf_keys(run_config_type()().model_dump(mode="json")) if k not in rows]
    assert not missing, f"keys without a row: {missing}"
    cells = {k: [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for k, row in rows.items()}
    assert cells["data.root"][2:] == ["text or null", "`null`", "", "None: the embedded synthetic dataset"]
    assert cells["cam.sweep_widen"][5].startswith("when the best of the sweep lies at its edge")  # a comment above the key
    assert cells["train_classifier.steps"][2] == "integer ≥ 1"
    assert cells["pseudo.bkg_threshold"][2] == "number in [0, 1] or one of auto"
    assert cells["train_classifier.color_jitter"][2] == "number in [0, 1]"
    assert cells["data.train_split"][4] == 'paper: `"train_aug"`'  # a profile's override
    assert cells["amp"][4] == ""  # no profile overrides it: paper runs in float32 as the official code (sasformer_voc: fp16)
    assert "### cam_voc" in config_page and "### afa_voc" in config_page
    # a section that may be null (pseudo.calibrate: null by default) still lists its keys
    assert cells["pseudo.calibrate"][3] == "`null`" and cells["pseudo.calibrate.split"][3] == "required"
