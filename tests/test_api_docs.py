"""The examples of docs/api.md run as they are written (each in its own Python, from the repository's
root), and say what the document says they say."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"<!-- example: python -->\n```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(
    encoding="utf-8"), re.DOTALL)


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_document_has_its_three_examples():
    assert len(EXAMPLES) == 3


def test_reading_a_card():
    out = run(EXAMPLES[0]).splitlines()
    assert out[0].startswith("张伟 ") and len(out[0].split()[1]) == 9  # the card number
    assert out[1] == "330302************"
    assert out[2] == "Wrong PIN: 2 tries left before the PIN is blocked (SW 63C2) (exit code 6, 2 tries left)"
    assert re.fullmatch(r"refused, exit code (\d+): .*no-such-card.*", out[3]) and not out[3].startswith(
        "refused, exit code 1:")


def test_the_conventions_fields_in_process():
    name, _card_no, issued, expires, terminal, device = run(EXAMPLES[1]).split()
    assert name == "张伟" and re.fullmatch(r"\d{8}", issued) and re.fullmatch(r"\d{8}", expires)
    assert terminal == "01" and device == "DESK-01"


def test_a_counter_flow_with_a_scripted_clerk():
    out = run(EXAMPLES[2])
    assert "TEST gateway credentials" in out  # say=print shows the warning, as the example says
    assert "Card genuine" in out
    total, account, cash = next(line for line in out.splitlines() if re.fullmatch(r"\d+ \d+ \d+", line)).split()
    assert int(total) == 2500 and int(account) + int(cash) <= 2500
    assert re.search(r"^\d+\.\d\d yuan back to the medical account$", out, re.MULTILINE)


@pytest.mark.parametrize("module", ["sscard.terminal.flows.desk", "sscard.terminal.flows.pharmacy", "sscard.terminal.flows.bank",
                                    "sscard.terminal.flows.kiosk", "sscard.terminal.reconcile"])
def test_the_flows_the_document_names_exist(module):
    import importlib

    names = {"sscard.terminal.flows.desk": ["register", "settle_visit", "refund"],
             "sscard.terminal.flows.pharmacy": ["purchase", "refund", "dual_card_activate"],
             "sscard.terminal.flows.bank": ["bank_activate"], "sscard.terminal.flows.kiosk": ["inquiry"],
             "sscard.terminal.reconcile": ["reconcile"]}[module]
    loaded = importlib.import_module(module)
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert all(callable(getattr(loaded, name, None)) and name in doc for name in names)
