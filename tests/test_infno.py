"""The transaction codes (message/infno.py) against docs/platform.md's "Transactions" table: every
code the enum names is in the table and every code of the table is in the enum; what the table marks
journaled and queueable is what the code treats so."""
from __future__ import annotations

import re
from pathlib import Path

from sscard.message.infno import CODES, QUEUEABLE, REVERSIBLE, Infno, clerk_word, label

TABLE = Path(__file__).resolve().parent.parent / "docs" / "platform.md"


def rows() -> list[tuple[list[str], str, str]]:
    section = TABLE.read_text(encoding="utf-8").split("## Transactions", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n|"):].strip().split("\n\n", 1)[0]
    found = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        found.append((re.findall(r"[0-9A-Z]{4}", cells[0]), cells[2], cells[3]))
    return found


def marked(codes: list[str], cell: str) -> set[str]:
    """The codes of a row a column marks: ``yes`` for all of them, else the codes it names."""
    return set(codes) if cell == "yes" else set(re.findall(r"[0-9A-Z]{4}", cell))


def test_the_docs_table_names_every_code_and_only_those():
    documented = {code for codes, _, _ in rows() for code in codes}
    assert documented == set(CODES)


def test_the_docs_table_marks_what_is_journaled_and_queueable():
    journaled = {c for codes, j, _ in rows() for c in marked(codes, j)} - {"2601"}
    queueable = {c for codes, _, q in rows() for c in marked(codes, q)}
    assert journaled == set(REVERSIBLE)
    assert queueable == set(QUEUEABLE)


def test_a_member_is_its_code_on_the_wire_and_in_the_journal():
    assert Infno.PHARMACY_SETTLEMENT == "2102" and f"{Infno.REVERSAL}" == "2601"
    assert CODES["SS02"] is Infno.TRANSFER
    assert label("2102") == "pharmacy settlement" and clerk_word("2102") == "purchase"
    assert clerk_word("1101") == label("1101") == "person information"
    assert label("XXXX") == "XXXX"  # an unknown code is shown as it came
    assert len({m.clerk_word for m in Infno}) == len(Infno)  # a clerk can tell every entry apart
