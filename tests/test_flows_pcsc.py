"""The desk and dual-card flows over a real pcscd with the vpcd driver's two virtual slots.

The same flows and CLI as tests/test_flows*.py, with the cards in "Virtual PCD 00 00" and "Virtual PCD 00 01".
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner
from flowing import PINS, clerk, platform, site, write_config  # noqa: F401  (fixtures)

from sscard.drivers import pcsc
from sscard.drivers.simulator import load_card
from sscard.drivers.simulator.oldmedical import load_old_card
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.flows.pharmacy import dual_card_activate, read_old_card

pytestmark = pytest.mark.pcsc

SLOT0, SLOT1 = "Virtual PCD 00 00", "Virtual PCD 00 01"


def infnos(config) -> list[str]:
    with sqlite3.connect(config.parent / "queue.sqlite") as db:
        return [row[0] for row in db.execute("SELECT infno FROM records ORDER BY rowid")]


def run(config, args, input=None):
    return CliRunner().invoke(main, args, input=input, env={"SSCARD_CONFIG": str(config)})


def test_desk_over_pcscd_first_registration_and_cross_region(vpcd_card, tmp_path):
    config = write_config(tmp_path)
    handle = vpcd_card("not-activated", slot=0)
    result = run(config, ["desk", "register", "-r", SLOT0, "--type", "outpatient", "--department", "内科",
                          "--pin-stdin", "--json"], "123456\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["activation"]["infno"] == "SS01"
    handle.stop()
    vpcd_card("other-region", slot=1)
    result = run(config, ["desk", "register", "-r", SLOT1, "--type", "hospitalisation", "--department", "外科",
                          "--pin-stdin", "--json"], PINS["other-region"] + "\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cross_region"] is True
    assert infnos(config) == ["SS01", "2201", "2401"]


def test_desk_over_pcscd_counterfeit_and_removal_queue_nothing(vpcd_card, tmp_path):
    config = write_config(tmp_path)
    handle = vpcd_card("counterfeit", slot=0)
    assert run(config, ["desk", "register", "-r", SLOT0, "--type", "outpatient", "--department", "内科"]).exit_code == 8
    handle.stop()
    vpcd_card("adult", slot=0, remove_after=8)  # pulled during the read
    result = run(config, ["desk", "register", "-r", SLOT0, "--type", "outpatient", "--department", "内科",
                          "--pin-stdin"], "246810\n")
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert not (config.parent / "queue.sqlite").exists() or infnos(config) == []


def test_dual_card_two_slots_over_pcscd(vpcd_card, tmp_path):
    config = write_config(tmp_path)
    old = vpcd_card(load_old_card("old-medical-lina"), slot=0)
    vpcd_card("not-activated", slot=1)
    result = run(config, ["pharmacy", "activate", "--old-reader", SLOT0, "-r", SLOT1, "--pin-stdin", "--json"],
                 "123456\n")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["moved"] == "1286.50" and out["old_card_marked_replaced"] is True and old.card.replaced
    assert infnos(config) == ["SS02"]


def test_dual_card_two_slots_swapped_then_the_right_way_round_over_pcscd(vpcd_card, tmp_path):
    config = write_config(tmp_path)
    vpcd_card("not-activated", slot=0)
    vpcd_card(load_old_card("old-medical-lina"), slot=1)
    swapped = run(config, ["pharmacy", "activate", "--old-reader", SLOT0, "-r", SLOT1, "--pin-stdin"], "123456\n")
    assert swapped.exit_code == 15 and "goes in first" in swapped.output
    assert not (config.parent / "queue.sqlite").exists() or infnos(config) == []
    right = run(config, ["pharmacy", "activate", "--old-reader", SLOT1, "-r", SLOT0, "--pin-stdin"], "123456\n")
    assert right.exit_code == 0, right.output
    assert infnos(config) == ["SS02"]


def test_dual_card_two_slots_mismatch_over_pcscd(vpcd_card, tmp_path):
    config = write_config(tmp_path)
    vpcd_card(load_old_card("old-medical-zhangwei"), slot=0)
    vpcd_card("not-activated", slot=1)
    result = run(config, ["pharmacy", "activate", "--old-reader", SLOT0, "-r", SLOT1, "--pin-stdin"], "123456\n")
    assert result.exit_code == 9 and "different people" in result.output
    assert not (config.parent / "queue.sqlite").exists() or infnos(config) == []


def test_dual_card_old_card_pulled_halfway_over_pcscd(vpcd_card, site):
    old_handle = vpcd_card(load_old_card("old-medical-lina"), slot=0)
    vpcd_card("not-activated", slot=1)
    with pcsc.connect(SLOT0) as old_reader, pcsc.connect(SLOT1) as new_reader:
        old = read_old_card(old_reader)
        old_handle.remove()
        with pytest.raises(Exception) as err:
            dual_card_activate(old, new_reader, site, clerk(PINS["not-activated"]), old_reader)
        assert exit_code(err.value) == 4
    assert sum(site.outbox.counts().values()) == 0 and not old_handle.card.replaced


def test_dual_card_one_reader_in_turn_over_pcscd(vpcd_card, tmp_path):
    """The CLI reads the old card, waits while the clerk swaps the cards in the same reader, goes on."""
    config = write_config(tmp_path)
    old_card = load_old_card("old-medical-lina")
    seen: list[int] = []
    execute = old_card.execute
    old_card.execute = lambda apdu: (seen.append(apdu[1]), execute(apdu))[1]  # type: ignore[method-assign]
    handle = vpcd_card(old_card, slot=0)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run(
        config, ["pharmacy", "activate", "-r", SLOT0, "--wait", "20", "--pin-stdin", "--json"], "123456\n")))
    thread.start()
    deadline = time.monotonic() + 15
    while 0x5C not in seen and time.monotonic() < deadline:  # GET BALANCE: the old card has been read
        time.sleep(0.05)
    time.sleep(0.3)
    handle.stop()
    vpcd_card(load_card("not-activated"), slot=0)
    thread.join(30)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["moved"] == "1286.50" and out["old_card_marked_replaced"] is False
    assert "Take out the old card" in result.stderr
    assert infnos(config) == ["SS02"]
