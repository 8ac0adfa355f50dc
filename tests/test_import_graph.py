"""The package layering: ``runkit`` is the neutral base; ``ndp`` and ``hwmodel`` never import
``jaxsparse``; ``jaxsparse`` imports ``hwmodel`` only inside ``jaxsparse.codesign`` (and the
CLI module that runs it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runkit", "jaxsparse", "hwmodel", "ndp")
SEAM = ("jaxsparse/codesign/", "jaxsparse/cli/codesign.py")


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every import statement in a file (at any depth, lazy ones included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _edges() -> dict[str, set[str]]:
    edges = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            edges[rel] = (_imported_packages(path) & set(PACKAGES)) - {package}
    return edges


def test_static_import_graph_is_layered():
    edges = _edges()
    assert len(edges) > 50, "the walk found too few modules; is ROOT right?"
    allowed = {"runkit": set(), "ndp": {"runkit"}, "hwmodel": {"runkit"}, "jaxsparse": {"runkit"}}
    bad = []
    for rel, targets in edges.items():
        package = rel.split("/")[0]
        ok = allowed[package] | ({"hwmodel"} if rel.startswith(SEAM) else set())
        if targets - ok:
            bad.append(f"{rel} imports {sorted(targets - ok)}")
    assert not bad, "layering broken:\n" + "\n".join(bad)
    # The seam is real: the co-design experiment does use hwmodel.
    assert "hwmodel" in edges["jaxsparse/codesign/experiment.py"]


@pytest.mark.parametrize("package", ["ndp", "hwmodel"])
def test_help_runs_without_jaxsparse(package):
    """``python -m ndp --help`` and ``python -m hwmodel --help`` (and each sub-command's help)
    work, and ``jaxsparse`` is not among the loaded modules afterwards."""
    code = (
        "import contextlib, importlib, io, sys\n"
        f"main = importlib.import_module('{package}.__main__')\n"
        "for argv in [['--help']] + [[c, '--help'] for c in main.COMMANDS]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main.main(argv)\n"
        "        except SystemExit as stop:\n"
        "            assert stop.code in (0, None), (argv, stop.code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jaxsparse', 'hwmodel', 'ndp', 'runkit'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.strip().splitlines()[-1]
    assert "jaxsparse" not in loaded, loaded
    assert package in loaded, loaded
