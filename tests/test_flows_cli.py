"""The counter commands as a clerk runs them: docs/flows.md's transcripts, --json, exit codes, the demo."""
from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flowing import configs, platform, write_config  # noqa: F401  (fixtures)

from sscard.terminal.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "flows.md"
BLOCK = re.compile(r'<!-- transcript config=(\w+) input="([^"]*)" exit=(\d+) -->\n```console\n\$ (.*?)\n(.*?)```', re.S)
PIPED = re.compile(r"echo (.*?) \| (sscard .*)")
MSGID = re.compile(r"\b[HB]3303\d{7}\d{18}\b")
SETL_ID = re.compile(r"\b(ST|CX|MD)\d{18}\b")
VISIT = re.compile(r"\bMD\d{18}\b")
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def normal(text: str) -> list[str]:
    return [TIME.sub("<time>", SETL_ID.sub(r"\1<id>", MSGID.sub("<msgid>", line))).rstrip() for line in text.splitlines()]


def run(config: Path, args: list[str], input: str | None = None):
    return CliRunner().invoke(main, args, input=input, env={"SSCARD_CONFIG": str(config)})


def test_docs_transcripts_match_what_the_cli_prints(configs, monkeypatch):
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 12
    seen = set()
    visits: dict[str, str] = {}  # a visit number the doc shows -> the one the platform gave in this run
    piped_runs = 0
    for config, answers, exit_code, command, expected in blocks:
        # a clerk at a terminal (questions with defaults asked, PINs at hidden prompts), or `echo ... | sscard`
        piped = PIPED.match(command)
        if piped:
            assert piped.group(1).split(" ") == answers.split("|"), command
            command, piped_runs = piped.group(2), piped_runs + 1
        monkeypatch.setattr("sscard.terminal.cli.prompts.at_terminal", lambda piped=piped: not piped)
        args = [visits.get(arg, arg) for arg in shlex.split(command)]
        assert args[0] == "sscard"
        seen.add(tuple(args[1:3]))
        result = run(configs[config], args[1:], "\n".join(answers.split("|")) + "\n" if answers else None)
        assert result.exit_code == int(exit_code), (command, result.output)
        assert normal(result.output) == normal(expected), command
        assert "Traceback" not in result.output
        visits.update(zip(VISIT.findall(expected), VISIT.findall(result.output)))
    assert {("desk", "register"), ("pharmacy", "activate"), ("pharmacy", "purchase"),
            ("bank", "activate")} <= seen and any(s[0] == "kiosk" for s in seen)
    assert piped_runs >= 1


def records(config: Path) -> list[tuple[str, str]]:
    """(infno, envelope) of the journal's records that stand (queued, or answered online)."""
    with sqlite3.connect(config.parent / "queue.sqlite") as db:
        return db.execute("SELECT infno, envelope FROM records WHERE state NOT IN ('refused', 'reversed', 'void')"
                          " ORDER BY rowid").fetchall()


def test_desk_json_is_clean_on_stdout(configs):
    result = run(configs["clinic"], ["desk", "register", "-r", "sim:other-region", "--type", "maternity",
                                     "--department", "妇产科", "--pin-stdin", "--json"], "802613\n")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["cross_region"] is True and out["insured_region"] == "440300" and out["registration"] == "maternity"
    assert "PIN correct." in result.stderr and "802613" not in result.output
    assert [r[0] for r in records(configs["clinic"])] == ["2201"]


def test_desk_no_pin_site(tmp_path):
    config = write_config(tmp_path, require_pin=False)
    result = run(config, ["desk", "register", "-r", "sim:adult", "--type", "outpatient", "--department", "内科"])
    assert result.exit_code == 0 and "PIN" not in result.output
    assert run(config, ["desk", "register", "-r", "sim:adult", "--type", "outpatient", "--department", "内科",
                        "--pin", "--pin-stdin"], "000000\n").exit_code == 6


@pytest.mark.parametrize(("args", "stdin", "code"), [
    (["desk", "register", "-r", "sim:blocked-pin", "--type", "outpatient", "--department", "内科", "--pin-stdin"],
     "135790\n", 7),
    (["desk", "register", "-r", "sim:counterfeit", "--type", "outpatient", "--department", "内科"], None, 8),
    (["bank", "activate", "-r", "sim:adult", "--pin-stdin"], "330302198506151239\n135792\n135792\n", 15),
    (["bank", "activate", "-r", "sim:not-activated", "--pin-stdin"], "330302199203081020\n135792\n135793\n", 11),
    (["pharmacy", "purchase", "-r", "sim:blocked-pin", "--sale", "T9", "--item", "x:1:1.00", "--pin-stdin"],
     "135790\n", 7),
    (["pharmacy", "refund", "--sale", "T9"], None, 16),
    (["pharmacy", "purchase", "-r", "sim:not-activated", "--sale", "T9", "--item", "x:1:1.00"], None, 15),
    (["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T9", "--item", "x:1:1.005"], None, 16),
    (["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T9", "--item", "x:²:1.00"], None, 16),
    (["pharmacy", "activate", "--old-reader", "sim:old-medical-replaced", "-r", "sim:blocked-pin"], None, 15),
    (["pharmacy", "activate", "-r", "sim:old-medical-lina"], None, 2),
    (["kiosk", "-r", "sim:adult", "--pin-stdin"], "000000\n", 6),
])
def test_refusals_exit_codes_and_nothing_queued(configs, args, stdin, code):
    result = run(configs["clinic"], args, stdin)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "Internal error" not in result.output
    assert records(configs["clinic"]) == [] if (configs["clinic"].parent / "queue.sqlite").exists() else True
    for secret in ("330302198506151239", "330302199203081020", "135792", "246810"):
        assert secret not in result.stderr


def test_dual_card_purchase_and_refund_json_agree_with_the_journal_and_the_platform(configs, platform):
    clinic = configs["clinic"]
    moved = run(clinic, ["pharmacy", "activate", "--old-reader", "sim:old-medical-zhangwei", "-r", "sim:adult",
                         "--pin-stdin", "--json"], "246810\n")
    assert moved.exit_code == 0, moved.output
    out = json.loads(moved.stdout)
    assert out["moved_fen"] == 53620 and out["old_card_marked_replaced"] is False and out["activation"] is None
    assert out["online"] is True and out["balance_fen"] == 235000 + 53620
    paid = run(clinic, ["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T1", "--item", "维生素C片:3:4.20",
                        "--pin-stdin", "--json"], "246810\n")
    assert paid.exit_code == 0, paid.output
    out = json.loads(paid.stdout)
    assert (out["total_fen"], out["account_fen"], out["cash_fen"], out["balance_fen"], out["already_paid"]) == (
        1260, 1260, 0, 235000 + 53620 - 1260, False)
    setl_id = out["setl_id"]
    assert setl_id == platform.ledger.show()["settlements"][0]["setl_id"]
    again = run(clinic, ["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T1", "--item", "维生素C片:3:4.20", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["already_paid"] is True
    back = run(clinic, ["pharmacy", "refund", "--sale", "T1", "--json"])
    assert back.exit_code == 0, back.output
    out = json.loads(back.stdout)
    assert (out["account_fen"], out["balance_fen"], out["init_setl_id"]) == (1260, 235000 + 53620, setl_id)
    assert platform.ledger.balance("3303000000000001") == 235000 + 53620
    infnos = [infno for infno, _ in records(clinic)]
    assert infnos == ["SS02", "2102", "2103"]
    body = json.loads(records(clinic)[1][1])["input"]["data"]
    assert (body["medfee_sumamt"], body["chrg_bchno"], body["psn_no"]) == ("12.60", "T1", "3303000000000001")
    kiosk = run(clinic, ["kiosk", "-r", "sim:adult", "--pin-stdin", "--json"], "246810\n")
    view = json.loads(kiosk.stdout)
    assert view["balance"] == "2886.20" and [r["infno"] for r in view["records"]] == ["2103", "2102", "SS02"]


def test_missing_configuration_is_exit_12(tmp_path):
    result = run(tmp_path / "none.toml", ["desk", "register", "--type", "outpatient", "--department", "内科"])
    assert result.exit_code == 12 and "sscard config init" in result.output


def test_demo_day_walks_online_and_balances(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Total 40.80 yuan: fund 0.00, medical personal account 40.80, cash 0.00" in out
    assert "Refunded sale T20260301-0002: 8.60 yuan back to the medical personal account" in out
    assert "it was reversed, nothing was done" in out and "reconciliation: balanced" in out
    assert "3303000000000002  李娜  1245.70 yuan" in out and "4403000000000006  陈静  2942.50 yuan" in out
    for name in ("bank-queue.sqlite", "clinic-queue.sqlite"):  # queued and sent, or answered online
        with sqlite3.connect(tmp_path / name) as db:
            assert db.execute("SELECT count(*) FROM records WHERE state NOT IN ('sent', 'answered')").fetchone()[0] == 0
    assert "Paid 55.00 yuan: fund 27.50, account 27.50" in out  # Shenzhen's rule, cross-region: 50 %
    with sqlite3.connect(tmp_path / "pharmacy-queue.sqlite") as db:
        states = dict(db.execute("SELECT infno || ' ' || state, count(*) FROM records GROUP BY 1").fetchall())
    assert states == {"SS02 answered": 1, "2102 answered": 3, "2103 answered": 1, "2102 reversed": 1,
                      "2601 answered": 1}
    held = CliRunner().invoke(main, ["demo", "--json"])
    assert held.exit_code == 0
    platform = json.loads(held.stdout)["platform"]
    assert [s["state"] for s in platform["settlements"]] == ["settled", "settled", "cancelled", "reversed", "settled"]


def test_a_counter_command_on_the_test_keys_says_so(tmp_path):
    config = write_config(tmp_path)  # the default [keys] store = "test"
    result = run(config, ["desk", "register", "--reader", "sim:adult", "--type", "outpatient",
                          "--department", "内科", "--pin-stdin"], "246810\n")
    assert result.exit_code == 0, result.output
    assert "Warning: using the TEST keys" in result.stderr and "real reader is refused" in result.stderr
    assert "[keys] store" in result.stderr and "--psam" not in result.stderr  # what this command can be told


def test_auth_and_reset_pin_take_the_configured_key_store(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace('store = "test"', 'store = "psam:sim:psam"'),
                      encoding="utf-8")
    auth = run(config, ["auth", "--reader", "sim:adult"])
    assert auth.exit_code == 0 and "PSAM in sim:psam" in auth.stdout and "TEST keys" not in auth.stderr
    reset = run(config, ["reset-pin", "--reader", "sim:adult", "--pin-stdin"], "330302198506151239\n902468\n")
    assert reset.exit_code == 0 and "TEST keys" not in reset.stderr, reset.output
    keys = tmp_path / "keys.json"  # the bundled TEST keys as a private key file
    keys.write_bytes((Path(__file__).resolve().parents[1] / "fixtures/keys/test-keys.json").read_bytes())
    keys.chmod(0o600)
    given = run(config, ["auth", "--reader", "sim:adult", "--key-file", str(keys)])
    assert "--psam READER or --key-file PATH" in given.stderr  # an option given wins over the configuration


def test_one_till_sale_paid_once_whatever_the_card(configs):
    clinic = configs["clinic"]
    for old, new, pin in (("sim:old-medical-lina", "sim:not-activated", "123456"),
                          ("sim:old-medical-zhangwei", "sim:adult", "246810")):
        moved = run(clinic, ["pharmacy", "activate", "--old-reader", old, "-r", new, "--pin-stdin"], pin + "\n")
        assert moved.exit_code == 0, moved.output
    paid = run(clinic, ["pharmacy", "purchase", "-r", "sim:not-activated", "--sale", "T0001", "--item", "x:1:1.00",
                        "--pin-stdin"], "123456\n")
    assert paid.exit_code == 0, paid.output
    again = run(clinic, ["pharmacy", "purchase", "-r", "sim:adult", "--sale", "t0001", "--item", "x:1:1.00",
                         "--pin-stdin", "--json"], "246810\n")
    assert again.exit_code == 16, again.output
    assert json.loads(again.stdout)["error"]["code"] == "payment_refused"  # --json: the error where the result goes
    assert "Sale T0001 was already paid with another card" in again.stderr and "李娜" not in again.stderr
    assert [infno for infno, _ in records(clinic)].count("2102") == 1
    free = run(clinic, ["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T0003", "--item", "空:1:0", "--pin-stdin"],
               "246810\n")
    assert free.exit_code == 16 and "total is 0.00 yuan" in free.output and "PIN" not in free.output, free.output
    assert [infno for infno, _ in records(clinic)].count("2102") == 1


def test_old_card_pulled_while_marked_still_reports_the_recorded_move(tmp_path, capsys, monkeypatch):
    import io

    from flowing import STATION, sim

    from sscard.terminal.cli.counter import ScreenClerk
    from sscard.terminal.cli.pharmacy import dual_card_two_readers
    from sscard.terminal.flows.common import Site
    from sscard.terminal.keystore import SoftwareKeyStore
    from sscard.terminal.queue import Outbox

    monkeypatch.setattr("sys.stdin", io.StringIO("123456\n"))
    old = sim("old-medical-lina", remove_after=18)  # two reads and the mark's SELECT, then pulled at MARK
    with Outbox(tmp_path / "queue.sqlite", STATION) as outbox:
        result = dual_card_two_readers(old, sim("not-activated"), Site(outbox, SoftwareKeyStore.bundled_test_keys()),
                                       ScreenClerk(pin_stdin=True, to_stderr=True), True)
        (record,) = outbox.records()
    out = json.loads(capsys.readouterr().out)
    assert record.infno == "SS02" and out["msgid"] == record.msgid == result.record.msgid
    assert out["old_card_marked_replaced"] is False and not old.card.replaced
    assert out["old_card_note"].startswith("Old card not marked replaced (not answering): ")


def test_an_unknown_registration_type_is_a_usage_error_as_the_doc_says(configs):
    result = run(configs["clinic"], ["desk", "register", "-r", "sim:adult", "--type", "dental", "--department", "内科"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    rows = {line.split("|")[1].strip(): line for line in DOC.read_text(encoding="utf-8").splitlines()
            if re.match(r"\| \d+ \|", line)}
    assert "registration type" not in rows["15"]
    assert "2 usage (an unknown `--type` of registration" in DOC.read_text(encoding="utf-8").replace("\n", " ")


def test_an_item_typed_with_a_mistake_is_asked_again_and_the_items_before_it_kept(configs, platform):
    clinic = configs["clinic"]
    run(clinic, ["pharmacy", "activate", "--old-reader", "sim:old-medical-zhangwei", "-r", "sim:adult", "--pin-stdin"],
        "246810\n")
    paid = run(clinic, ["pharmacy", "purchase", "-r", "sim:adult", "--sale", "T7", "--pin-stdin", "--json"],
               "维生素C片:3:4.20\n板蓝根颗粒:2:15.0.0\n板蓝根颗粒:2:15.00\n\n246810\n")
    assert paid.exit_code == 0, paid.output
    assert "is not an item" in paid.stderr or "is not an amount" in paid.stderr
    assert json.loads(paid.stdout)["total_fen"] == 3 * 420 + 2 * 1500


def sscard(config: Path, *args: str, input: str) -> subprocess.CompletedProcess:
    """The CLI in its own process, its standard input a pipe (not a terminal), as a script runs it."""
    return subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')", *args],
                          input=input, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SSCARD_CONFIG": str(config)})


def test_piped_lines_answer_only_the_questions_without_defaults_and_pins_need_no_terminal(configs):
    clinic = configs["clinic"]
    # the registration type has a default: not asked, so the PIN line is the PIN (it was taken as the type)
    piped = sscard(clinic, "desk", "register", "-r", "sim:adult", "--department", "内科", "--pin-stdin", "--json",
                   input="246810\n")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["registration"] == "outpatient" and "Registration type" not in piped.stderr
    # without --pin-stdin: the PIN is still read from the pipe, without Python's getpass warning
    for args, code in ((["desk", "register", "-r", "sim:adult", "--department", "外科"], 0),
                       (["verify-pin", "-r", "sim:adult"], 6)):
        run_ = sscard(clinic, *args, input="246810\n" if code == 0 else "000000\n")
        assert run_.returncode == code, run_.stderr
        assert "Warning" not in run_.stderr and "Traceback" not in run_.stderr
    empty = sscard(clinic, "verify-pin", "-r", "sim:adult", input="")
    assert empty.returncode == 2 and "no PIN on standard input" in empty.stderr


def test_maternity_for_a_male_holder_needs_the_clerks_yes(configs):
    clinic = configs["clinic"]
    asked = sscard(clinic, "desk", "register", "-r", "sim:adult", "--type", "maternity", "--department", "妇产科",
                   input="246810\n")
    assert asked.returncode == 15 and "give --yes to confirm" in asked.stdout
    assert "male holder not confirmed" in asked.stderr and records(clinic) == []
    yes = sscard(clinic, "desk", "register", "-r", "sim:adult", "--type", "maternity", "--department", "妇产科",
                 "--yes", input="246810\n")
    # confirmed: then the platform decides (张伟 has no maternity insurance)
    assert "? yes (--yes)" in yes.stdout and yes.returncode == 15 and "no insurance in force" in yes.stderr


def test_queue_list_finds_a_cards_records_by_the_number_printed_on_it(configs):
    clinic = configs["clinic"]
    assert run(clinic, ["desk", "register", "-r", "sim:adult", "--department", "内科", "--pin-stdin"], "246810\n").exit_code == 0
    assert run(clinic, ["desk", "register", "-r", "sim:other-region", "--department", "内科", "--pin-stdin"],
               "802613\n").exit_code == 0

    def listed(card: str) -> list[str]:
        result = run(clinic, ["queue", "list", "--config", str(clinic), "--card", card, "--json"])
        assert result.exit_code == 0, result.output
        return [row["infno"] for row in json.loads(result.stdout)]

    assert listed("A01234567") == ["2201"] == listed("330300d15600000501234567ffffffff")
    assert listed("A0123456") == [] and listed("A01234568") == []  # a number, not a part of one
