"""Every citation points inside the repository (issue 14: "no citation of a file outside the repository").

The public facts the code relies on are in docs/reference/ (docs/reference/README.md), the project's
decisions in docs/design.md. A clone has nothing beside the repository, so a docstring, comment or doc
that names a file outside it, a repository path under docs/ that does not exist, a relative markdown
link that leads nowhere, or package data that matches no file, fails here.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: folders that are not the project's text: environments, caches, build output
SKIP = {".venv", "venv", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", ".hypothesis", "node_modules"}

#: names of files that were never in the repository (notes beside an earlier checkout), built from
#: pieces so that this file does not cite them itself
OUTSIDE = ["../" + "shared", "shared/" + "reference", "DESIGN" + ".md", "central-" + "service.md",
           "ssc-" + "card.md"]

#: a repository path of a doc, as code and docs cite them (`docs/card-profile.md`)
DOC_PATH = re.compile(r"(?<![\w./-])(docs/[\w./-]*?\.md)(?![\w-])")

#: a markdown link or image: [text](target "title")
MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _texts(*suffixes: str) -> list[Path]:
    return sorted(path for path in ROOT.rglob("*")
                  if path.suffix in suffixes and path.is_file()
                  and not SKIP.intersection(path.relative_to(ROOT).parts[:-1])
                  and not any(part.endswith(".egg-info") for part in path.relative_to(ROOT).parts))


TEXTS = _texts(".py", ".md", ".toml")
MARKDOWN = [ROOT / "README.md", *(path for path in _texts(".md") if path.is_relative_to(ROOT / "docs"))]


def test_the_walk_finds_the_project():
    names = {path.relative_to(ROOT).as_posix() for path in TEXTS}
    assert {"README.md", "pyproject.toml", "docs/reference/README.md", "apdu/commands.py"} <= names


def test_no_citation_of_a_file_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in TEXTS if path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if any(name in line for name in OUTSIDE)]
    assert not found, "cite docs/reference/ or docs/design.md instead:\n" + "\n".join(found)


def test_every_doc_path_cited_exists():
    missing = [f"{path.relative_to(ROOT)}: {cited}"
               for path in TEXTS
               for cited in sorted(set(DOC_PATH.findall(path.read_text(encoding="utf-8", errors="replace"))))
               if not (ROOT / cited).is_file()]
    assert not missing, "cited docs that are not in the repository:\n" + "\n".join(missing)


def _relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    # links inside code blocks and code spans are examples, not links
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in MD_LINK.findall(text)
            if not re.match(r"[a-zA-Z][\w+.-]*:", target) and not target.startswith("#")]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_markdown_links_resolve(path: Path):
    broken = []
    for target in _relative_links(path):
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to what the repository does not hold: {broken}"


def test_the_link_finder_sees_links():
    sample = ROOT / "docs" / "reference" / "README.md"
    assert MD_LINK.findall("see [the card](card.md#files) and ![x](../img.png \"t\")") == ["card.md#files",
                                                                                         "../img.png"]
    assert sample.is_file()


def folder(setuptools: dict, package: str) -> str:
    """Where ``package`` is in the repository: pyproject's package-dir maps ``sscard.fixtures`` to
    ``fixtures/`` (and its subpackages below it)."""
    mapped = setuptools.get("package-dir", {})
    parent = next((p for p in sorted(mapped, key=len, reverse=True) if package == p or package.startswith(p + ".")),
                  None)
    if parent is None:
        return package.replace(".", "/")
    return "/".join([mapped[parent], *package[len(parent):].split(".")[1:]])


def test_package_data_matches_files():
    """Every package-data pattern of pyproject.toml names at least one file of its package."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    unmatched = [f"{package}: {pattern}"
                 for package, patterns in setuptools.get("package-data", {}).items()
                 for pattern in patterns
                 if not any(path.is_file() for path in (ROOT / folder(setuptools, package)).glob(pattern))]
    assert not unmatched, f"package data that matches no file: {unmatched}"
