"""Hostile cards (drivers/simulator/hostile.py): every loop and wait is bounded, the error is clear,
the exit code distinct, and nothing is recorded. In memory and through pcscd's virtual reader: the
identity read, and the flows that record (desk registration, bank activation) in every mode at a
spread of positions; a card stalling after its flow has recorded (the dual-card insert's old card)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from sscard.apdu.errors import CardDataError, SSCardError
from sscard.drivers.connection import MAX_GET_RESPONSE
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.drivers.simulator.hostile import MODES, HostileCard
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code

#: a mode -> the exit code and words the clerk sees (from the first spoiled command on)
EXPECTED = {
    "endless-61": (4, "more data"),
    "wrong-length": (5, "damaged"),
    "out-of-sequence": (5, ""),
    "random": (None, ""),  # any of our codes: the bytes are random
}


def sscard(*args: str, timeout: float = 60, input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, input=input)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest.mark.parametrize("after", [0, 1, 3, 9, 14])  # the read: 15 commands
def test_identity_read_from_a_hostile_card_raises_only_our_errors(mode, after):
    for seed in range(5):
        card = HostileCard(load_card("adult"), mode, after=after, seed=seed)
        connection = MemoryConnection(card)
        with pytest.raises(SSCardError) as err:
            SocialSecurityCard(connection).read_identity()
        assert connection.apdu_count <= after + 1 + 64, "a loop was not bounded"
        code, words = EXPECTED[mode]
        assert code is None or exit_code(err.value) == code, str(err.value)
        assert words in str(err.value)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_cli_read_of_a_hostile_card_is_a_clear_error(mode):
    result = CliRunner().invoke(main, ["read", "--reader", f"sim:hostile:{mode}:adult:2"])
    assert result.exit_code in (4, 5, 6, 7, 8), result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output


ADULT_PIN = "246810"


def _spoiled_from_now(card: HostileCard) -> None:
    card.after = card.commands  # the next command on is spoiled


def test_verify_answered_with_data_is_a_card_data_error():
    """VERIFY has no response data (ISO 7816-4 s7.5.6): the right PIN's 9000 padded with bytes is refused."""
    card = HostileCard(load_card("adult"), "wrong-length", after=10**6)
    session = SocialSecurityCard(MemoryConnection(card))
    session.select()
    _spoiled_from_now(card)
    with pytest.raises(CardDataError, match="answered VERIFY with [0-9]+ data bytes") as err:
        session.verify_pin(ADULT_PIN)
    assert exit_code(err.value) == 5


def test_pin_status_answered_with_data_is_a_card_data_error():
    card = HostileCard(load_card("adult"), "wrong-length", after=10**6)
    session = SocialSecurityCard(MemoryConnection(card))
    session.verify_pin(ADULT_PIN)
    _spoiled_from_now(card)
    with pytest.raises(CardDataError, match="answered VERIFY with"):
        session.pin_tries_left()


def test_cli_verify_pin_answered_with_data_exits_5():
    # after=1: the SELECT (P2 0C: no GET RESPONSE) is genuine, the VERIFY is spoiled
    result = sscard("verify-pin", "--reader", "sim:hostile:wrong-length:adult:1", input=ADULT_PIN + "\n")
    assert result.returncode == 5, result.stderr
    assert "PIN correct" not in result.stdout
    assert result.stderr.startswith("Error: The card answered VERIFY with") and "Traceback" not in result.stderr
    assert ADULT_PIN not in result.stdout + result.stderr


def test_unknown_hostile_mode_is_a_profile_error():
    result = CliRunner().invoke(main, ["read", "--reader", "sim:hostile:polite"])
    assert result.exit_code == 12
    assert all(mode in result.output for mode in MODES)


def test_stalled_card_in_memory_is_given_up_after_the_card_timeout():
    started = time.monotonic()
    result = sscard("--card-timeout", "1", "read", "--reader", "sim:hostile:stall:adult:3", timeout=30)
    waited = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert "has not answered for" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing half-printed
    assert waited < 9, "the 10 s stall was waited out instead of bounded"  # bound, not a speed figure


@pytest.mark.pcsc
def test_stalled_card_over_pcscd_is_given_up_after_the_card_timeout(vpcd_card):
    vpcd_card("hostile:stall:adult:3", process=True)
    result = sscard("read", "--reader", "Virtual PCD 00 00", timeout=40, SSCARD_CARD_TIMEOUT="1")
    assert result.returncode == 4, result.stderr
    assert "Virtual PCD 00 00" in result.stderr and "has not answered" in result.stderr


@pytest.mark.pcsc
@pytest.mark.parametrize("mode", ["endless-61", "wrong-length", "random"])
def test_hostile_card_over_pcscd_is_a_clear_error(vpcd_card, mode):
    vpcd_card(f"hostile:{mode}:adult:2", process=True)
    result = sscard("read", "--reader", "Virtual PCD 00 00", SSCARD_CARD_TIMEOUT="5")
    assert result.returncode in (4, 5), result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


# --- a card that stalls after the flow has recorded its transaction ---------------------------------

DUAL_CARD_STALLING_OLD_CARD = """
import sys
sys.path.insert(0, {tests!r})
from flowing import STATION, sim
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator.hostile import HostileCard
from sscard.drivers.simulator.oldmedical import load_old_card
from sscard.terminal.cli import watchdog
from sscard.terminal.cli.counter import ScreenClerk
from sscard.terminal.cli.pharmacy import dual_card_two_readers
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.flows.common import Site
from sscard.terminal.queue import Outbox

watchdog.arm(1)
# the old card answers its two reads and the SELECT of the mark (18 commands), then stalls on MARK
old = MemoryConnection(HostileCard(load_old_card("old-medical-lina"), "stall", after=18, stall_s=60),
                       name="sim:old-medical-lina")
with Outbox({queue!r}, STATION) as outbox:
    as_json = {as_json!r}
    dual_card_two_readers(old, sim("not-activated"), Site(outbox, SoftwareKeyStore.bundled_test_keys()),
                          ScreenClerk(pin_stdin=True, to_stderr=as_json), as_json)
"""


@pytest.mark.parametrize("as_json", [True, False])
def test_old_card_stalling_while_marked_after_the_move_is_recorded_reports_the_move(tmp_path, as_json):
    import json
    from pathlib import Path

    from sscard.terminal.queue import Outbox

    queue = tmp_path / "queue.sqlite"
    script = DUAL_CARD_STALLING_OLD_CARD.format(tests=str(Path(__file__).parent), queue=str(queue), as_json=as_json)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], input="123456\n", capture_output=True, text=True,
                            timeout=30)
    assert time.monotonic() - started < 20, "the 60 s stall was waited out"
    assert result.returncode == 0, result.stderr  # recorded: not "4, nothing done"
    assert "Traceback" not in result.stderr
    with Outbox(queue) as outbox:
        (record,) = outbox.records()
    assert record.infno == "SS02"
    screen = result.stderr if as_json else result.stdout
    # a site with no platform to ask: the move waits in the queue
    assert f"Account move recorded: 1286.50 yuan, to be made when the platform has it ({record.msgid})." in screen
    assert "Old card not marked replaced (not answering): The card in sim:old-medical-lina has not answered" in screen
    if as_json:
        out = json.loads(result.stdout)
        assert out["msgid"] == record.msgid and out["old_card_marked_replaced"] is False
        assert out["old_card_note"].startswith("Old card not marked replaced (not answering)")
    else:
        assert screen.count("Old card not marked replaced") == 1


# --- the flows that record, against each hostile mode ---------------------------------------------

def _desk(connection, site):
    from flowing import PINS, clerk

    from sscard.terminal.flows.desk import register

    return register(connection, site, "outpatient", "内科", clerk(PINS["adult"]))


def _bank(connection, site):
    from flowing import clerk

    from sscard.terminal.flows.bank import bank_activate

    return bank_activate(connection, site, "330302199203081020", clerk("135792", "135792"))


#: flow -> (its function, the card it runs on, the commands of a genuine run)
RECORDING_FLOWS = {"desk-registration": (_desk, "adult", 21), "bank-activation": (_bank, "not-activated", 23)}


@pytest.mark.parametrize("flow", sorted(RECORDING_FLOWS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("after", [0, 1, 2, 3, 5, 8, 13, 18, 20, 21, 22, 23, 40])
def test_a_recording_flow_on_a_hostile_card_is_a_typed_error_and_records_nothing(tmp_path, flow, mode, after):
    from flowing import STATION
    from queueing import Clock

    from sscard.terminal.flows.common import Site
    from sscard.terminal.keystore import SoftwareKeyStore
    from sscard.terminal.queue import Outbox

    run, profile, genuine_commands = RECORDING_FLOWS[flow]
    for seed in range(3):
        with Outbox(tmp_path / f"{mode}-{after}-{seed}.sqlite", STATION, clock=Clock()) as outbox:
            site = Site(outbox, SoftwareKeyStore.bundled_test_keys())
            connection = MemoryConnection(HostileCard(load_card(profile), mode, after=after, seed=seed, stall_s=0.001))
            try:
                result = run(connection, site)
            except SSCardError:  # anything else (ValueError, IndexError...) fails the test as it is
                assert outbox.counts() == {"pending": 0, "sending": 0, "sent": 0, "dead": 0}, (seed, "recorded")
                result = None
            # every command's GET RESPONSE rounds are bounded; the bank asks the card once more (SELECT and
            # its identification code read back)
            # after a failed change, so two spoiled commands at most each run their bounded rounds
            assert connection.apdu_count <= genuine_commands + 2 * (1 + MAX_GET_RESPONSE), "a loop was not bounded"
            if result is None:
                continue
            # Completed: only where the card's answers are indistinguishable from a genuine success, and
            # then exactly one record (the desk's card is active: no SS01; the bank's SS01, released):
            # - no spoiled answer at all (``after`` at or past the flow's last command);
            # - ``stall``, ``pause``: every answer is the genuine one, only late (the watchdog is the CLI's);
            # - ``wrong-length``: the right status word with garbage after it, to a command whose
            #   answer carries no data the terminal reads (VERIFY, APPLICATION UNBLOCK): the terminal
            #   checks the status word, as a real terminal does.
            # ``out-of-sequence`` and ``random`` never complete: a wrong status word or garbage always
            # stops the flow. (A spoiled answer the card gave AFTER executing the command, e.g. a stray
            # status word to APPLICATION UNBLOCK, leaves the simulated chip activated with nothing
            # recorded: asked again, the same hostile card denies it, and the terminal believes the card.)
            late_or_trailing = ("stall", "pause", "wrong-length")
            assert after >= genuine_commands or mode in late_or_trailing, (seed, "completed on garbage")
            assert [r.state for r in outbox.records()] == ["pending"], seed
            assert outbox.records()[0].msgid == result.record.msgid
