"""The installed layout (pyproject.toml): everything of ours under the one namespace ``sscard``, so
nothing shadows another distribution's top-level package (``fixtures`` and ``drivers`` are common
names on PyPI). The folders stay at the repository's top (docs/architecture.md, "Layout");
setuptools maps ``sscard.apdu`` to ``apdu/`` and so on."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("apdu", "drivers", "terminal", "central", "message", "fixtures")


def python_files() -> list[Path]:
    return [p for folder in (*PACKAGES, "tests", "bench") for p in sorted((ROOT / folder).rglob("*.py"))]


def test_every_import_of_ours_goes_through_the_namespace():
    # run from the checkout, ``import apdu`` would still work (the current folder is on sys.path) and
    # load a second copy of a module: two SSCardError classes, two simulators' state
    stray = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            stray += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert stray == []


def test_no_code_in_a_string_or_a_doc_imports_ours_by_the_old_names():
    # a ``python -c`` snippet naming a package the old way, run from the checkout, would load a second copy
    old = re.compile(rf"\b(?:from|import) (?:{'|'.join(PACKAGES)})(?:\.\w+)*(?: import |\s*$| as |;)", re.M)
    texts = [*python_files(), *sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
    found = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in texts
             for m in old.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    return zipfile.ZipFile(next(out.glob("sscard_terminal-*.whl")))


def test_the_wheel_puts_only_sscard_at_the_top(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"sscard", next(t for t in tops if t.endswith(".dist-info"))}


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(wheel.namelist())
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked  # the checkout is a git clone
    missing = [f for f in tracked if f"sscard/{f}" not in names]
    assert missing == []
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sscard = sscard.terminal.cli:main" in entry
