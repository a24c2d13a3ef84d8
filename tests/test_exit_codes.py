"""Exit codes are one table (terminal/cli/exits.py): README's "Exit codes" says the same, every error
class has a code there other than 1 (a bug's), no class carries one itself, and the tree of
apdu/errors.py's docstring is the tree of the classes."""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sscard.apdu import errors as apdu_errors
from sscard.apdu.errors import SSCardError
from sscard.terminal.cli import exits

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("apdu", "drivers", "message", "terminal", "central")


def all_errors() -> list[type[SSCardError]]:
    """Every SSCardError class of the project's packages, each module imported."""
    for package in LAYERS:
        name = f"sscard.{package}"
        for module in pkgutil.walk_packages(importlib.import_module(name).__path__, f"{name}."):
            importlib.import_module(module.name)

    def walk(root: type[SSCardError]) -> Iterator[type[SSCardError]]:
        for sub in root.__subclasses__():
            yield sub
            yield from walk(sub)

    return sorted({cls for cls in walk(SSCardError) if cls.__module__.split(".")[:2] in (["sscard", p] for p in LAYERS)},
                  key=lambda cls: cls.__name__)


ERRORS = all_errors()


def readme_codes() -> dict[int, str]:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    return {int(row[1]): row[2].strip() for row in rows if row[1].strip().isdigit()}


def test_readme_lists_the_tables_codes_with_the_same_words():
    assert readme_codes() == exits.MEANINGS


def test_every_code_of_an_error_has_a_meaning():
    assert set(exits.EXIT_CODES.values()) <= set(exits.MEANINGS)


def test_class_names_are_unique_and_every_name_in_the_table_is_a_class():
    names = [cls.__name__ for cls in ERRORS]
    assert len(names) == len(set(names)), "the table names classes: two may not share a name"
    assert set(exits.EXIT_CODES) <= set(names)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_has_a_code_of_its_own_and_carries_none(cls):
    assert exits.exit_code(cls) not in (exits.SUCCESS, exits.INTERNAL), f"{cls.__name__} would exit as a bug"
    assert "exit_code" not in vars(cls)


def test_the_code_is_the_nearest_named_bases():
    from sscard.drivers.errors import CardRemovedError, NoCardError

    assert exits.exit_code(CardRemovedError()) == exits.exit_code(NoCardError) == 4
    assert exits.exit_code(SSCardError("no class of ours")) == exits.INTERNAL
    assert exits.error_object(CardRemovedError("gone")) == {"code": "card_removed", "exit_code": 4, "message": "gone"}


# --- the tree of apdu/errors.py -------------------------------------------------------------------

def drawn_tree() -> list[tuple[int, str, str | None, str | None]]:
    """(depth, class name, extra base, the module path the line names) of each line of the tree."""
    doc = apdu_errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1]
    out = []
    for line in block.splitlines():
        if not line.strip():
            break
        m = re.fullmatch(r"( *)(\w+)(?: \((\w+)\))?(?: +([\w/]+\.py)?.*)?", line)
        assert m, line
        out.append(((len(m.group(1)) - 4) // 2, m.group(2), m.group(3), m.group(4)))
    return out


def test_the_tree_in_apdu_errors_is_the_tree_of_the_classes():
    by_name = {cls.__name__: cls for cls in ERRORS} | {"SSCardError": SSCardError}
    drawn = drawn_tree()
    assert {name for _, name, _, _ in drawn} == set(by_name), "every class drawn once, and only those"
    stack: list[str] = []
    for depth, name, extra, path in drawn:
        del stack[depth:]
        cls = by_name[name]
        if stack:
            parents = [base.__name__ for base in cls.__bases__ if issubclass(base, SSCardError)]
            assert parents == [stack[-1]], f"{name} is drawn under {stack[-1]}, derives from {parents}"
        others = [base.__name__ for base in cls.__bases__
                  if not issubclass(base, SSCardError) and base is not Exception]
        assert others == ([extra] if extra else []), f"{name}: other bases {others}"
        if path:
            assert cls.__module__.removeprefix("sscard.").replace(".", "/") + ".py" == path, \
                f"{name} lives in {cls.__module__}"
        stack.append(name)
