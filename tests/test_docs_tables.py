"""README.md and docs/*.md against the benchmark JSON they quote (benchmarks/tables.py).

Every figure table sits between ``<!-- table:NAME -->`` markers and must equal what the
generator renders from ``benchmarks/results/*.json``; these tests fail when a table and its JSON
disagree, when a marker is unknown or unmatched, when the README outgrows a five-minute read, or
when a relative link leads nowhere. The last tests check that the check itself can fail.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250


def _load_tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", REPO / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


tables = _load_tables()
DOCUMENTS = tables.documents(REPO)


def test_documents_exist():
    names = {p.relative_to(REPO).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/jaxsparse.md", "docs/hwmodel.md", "docs/ndp.md"} <= names
    for path in DOCUMENTS:
        assert path.is_file(), path


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_tables_agree_with_their_json(path):
    assert tables.check([path]) == []


def test_every_registered_table_appears_in_the_documents():
    used = set()
    for path in DOCUMENTS:
        used |= {m.group(1) for m in tables._markers(path.read_text()) if m.re is tables._OPEN}
    assert set(tables.TABLES) - used == set()
    assert used - set(tables.TABLES) == set()


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_suite_time_is_stated_in_one_marked_place():
    text = (REPO / "README.md").read_text()
    assert len(re.findall(r"<!-- suite-time -->\d+<!-- /suite-time -->", text)) == 1


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path):
    text = path.read_text()
    spans = tables._fenced_spans(text)
    for m in _LINK.finditer(text):
        target = m.group(1)
        if any(a <= m.start() < b for a, b in spans) or re.match(r"[a-z]+:", target):
            continue
        yield target


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_existing_files(path):
    missing = [t for t in _relative_links(path) if not (path.parent / t.split("#", 1)[0]).exists()]
    assert missing == []


def _github_anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor_by_hand():
    assert _github_anchor("System model (`ndp.sysmodel`)") == "system-model-ndpsysmodel"
    assert _github_anchor("Scaling out: 1 process against 2") == "scaling-out-1-process-against-2"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_to_sections_name_existing_headings(path):
    bad = []
    for target in _relative_links(path):
        if "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        linked = (path.parent / file) if file else path
        if linked.suffix == ".md" and linked.exists():
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
            if anchor not in {_github_anchor(h) for h in headings}:
                bad.append(target)
    assert bad == []


def test_every_json_a_table_names_exists():
    for path in DOCUMENTS:
        for name in re.findall(r"`benchmarks/results/([\w.-]+\.json)`", path.read_text()):
            assert (REPO / "benchmarks" / "results" / name).is_file(), (path, name)


# ---------------------------------------------------------------- the check can fail


def _headline_block(text):
    return re.search(r"<!-- table:headline -->.*?<!-- /table:headline -->", text, re.S).group(0)


def test_a_changed_number_in_a_table_is_detected(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = _headline_block(readme)
    figure = re.search(r"\d+\.\d+x", block).group(0)
    edited = readme.replace(block, block.replace(figure, "9" + figure, 1))
    path = tmp_path / "README.md"
    path.write_text(edited)
    problems = tables.check([path])
    assert any("table:headline differs" in p for p in problems), problems


def test_a_changed_json_value_is_detected():
    """The table follows its JSON: the same document fails once the JSON says something else."""
    data = json.loads((REPO / "benchmarks" / "results" / "hw_search.json").read_text())
    changed = copy.deepcopy(data)
    changed["results"][0]["median_gradient_evaluations"] = 12345
    text = (REPO / "docs" / "hwmodel.md").read_text()
    results = tables.Results(overrides={"hw_search.json": changed})
    new, problems = tables.render_text(text, results)
    assert problems == []
    assert tables.differing_tables(text, new) == ["hw_search"]
    assert "| 12345 |" in new and "| 12345 |" not in text


def test_unknown_and_unmatched_markers_are_reported():
    text = ("<!-- table:no_such_table -->\nold\n<!-- /table:no_such_table -->\n"
            "<!-- table:hw_search -->\n"
            "<!-- /table:scalesim -->\n")
    new, problems = tables.render_text(text)
    assert any("table:no_such_table: unknown table" in p for p in problems)
    assert any("table:hw_search: no <!-- /table:hw_search -->" in p for p in problems)
    assert any("table:scalesim: closing marker without an opening one" in p for p in problems)
    assert "old" in new  # an unknown table's text is left as it was


def test_markers_in_code_blocks_are_examples_not_tables():
    text = "```\n<!-- table:no_such_table -->\n<!-- /table:no_such_table -->\n```\n"
    assert tables.render_text(text) == (text, [])


def test_rendering_is_a_fixed_point():
    """Rendering a rendered document changes nothing (the check compares like with like)."""
    text = (REPO / "docs" / "ndp.md").read_text()
    once, _ = tables.render_text(text)
    twice, _ = tables.render_text(once)
    assert once == twice


def test_formatting_helpers_against_hand_values():
    assert tables.pct(0.8679, 2) == "86.79%"
    assert tables.times(2.4814938) == "2.48x"
    assert tables.grouped(848954) == "848,954"
    assert tables.sci(83474412.8) == "8.3e7"
    assert tables.plain(3000000.0) == "3,000,000"
    assert tables.plain(0.10000000149011612) == "0.1"
    assert tables.md_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
