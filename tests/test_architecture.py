"""docs/architecture.md says true things: the files and names it cites exist, "A newcomer's check"
needs three files at most per command, and the imports go the way "The layers" says."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
LAYERS = ("apdu", "drivers", "message", "terminal", "central")
#: what each layer may import of ours (docs/architecture.md, "The layers")
ALLOWED = {
    "apdu": {"apdu"},
    "drivers": {"apdu", "drivers"},
    "message": {"message"},
    "terminal": {"apdu", "drivers", "message", "terminal"},
    "central": {"apdu", "message", "central"},
}
#: the exceptions the page names: the commands that start the virtual platform, the platform's private files
EXCEPTIONS = {("terminal/demo.py", "central"), ("terminal/cli/queue.py", "central"),
              ("central/ledger.py", "terminal.private")}


def defined(path: Path) -> set[str]:
    """The names a module defines: its functions, classes and assignments, and its classes' methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_file_the_page_names_exists():
    paths = set(re.findall(r"`((?:apdu|drivers|message|terminal|central|tests|docs)/[\w/.]*)`", DOC))
    assert len(paths) > 15
    for path in paths:
        assert (ROOT / path).exists(), path


def newcomer_rows() -> list[tuple[str, list[str]]]:
    section = DOC.split("## A newcomer's check", 1)[1]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| command", "|---"))]
    return [(row.split("|")[1].strip(), row.split("|")[2:-1]) for row in rows]


def test_the_newcomers_check_covers_its_three_commands():
    assert [command for command, _ in newcomer_rows()] == ["VERIFY", "EXTERNAL AUTHENTICATE", "READ RECORD"]


@pytest.mark.parametrize("command, cells", newcomer_rows(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_newcomer_needs_three_files_at_most_and_finds_what_the_page_says_there(command, cells):
    files: set[str] = set()
    for cell in cells:
        for path, names in re.findall(r"`([\w/]+\.py)`: ((?:`\w+`(?:, )?)+)", cell):
            files.add(path)
            there = defined(ROOT / path)
            for name in re.findall(r"`(\w+)`", names):
                assert name in there, f"{command}: {name} is not in {path}"
    assert 1 <= len(files) <= 3, (command, files)


def imports(path: Path) -> set[str]:
    """The modules of ours ``path`` imports (anywhere in it, a function's local imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    ours = {name.removeprefix("sscard.") for name in out if name.startswith("sscard.")}
    return {name for name in ours if name.split(".")[0] in LAYERS}


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_the_way_the_page_says(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        for name in imports(path):
            if name.split(".")[0] in ALLOWED[layer]:
                continue
            assert any(where == file and (name == module or name.startswith(module + "."))
                       for file, module in EXCEPTIONS), f"{where} imports {name}"
