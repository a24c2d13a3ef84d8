"""Hostile cards (drivers/simulator/hostile.py): every loop and wait is bounded, the error is clear,
the exit code distinct, and nothing is recorded. In memory and through pcscd's virtual reader."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from apdu.errors import CardDataError, SSCardError
from drivers.memory import MemoryConnection
from drivers.simulator import load_card
from drivers.simulator.hostile import MODES, HostileCard
from terminal.card import SocialSecurityCard
from terminal.cli import main

#: a mode -> the exit code and words the clerk sees (from the first spoiled command on)
EXPECTED = {
    "endless-61": (4, "more data"),
    "wrong-length": (5, "damaged"),
    "out-of-sequence": (5, ""),
    "random": (None, ""),  # any of our codes: the bytes are random
}


def sscard(*args: str, timeout: float = 60, input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", "from terminal.cli import main; main()", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, input=input)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest.mark.parametrize("after", [0, 1, 3, 9, 16])
def test_identity_read_from_a_hostile_card_raises_only_our_errors(mode, after):
    for seed in range(5):
        card = HostileCard(load_card("adult"), mode, after=after, seed=seed)
        connection = MemoryConnection(card)
        with pytest.raises(SSCardError) as err:
            SocialSecurityCard(connection).read_identity()
        assert connection.apdu_count <= after + 1 + 64, "a loop was not bounded"
        code, words = EXPECTED[mode]
        assert code is None or err.value.exit_code == code, str(err.value)
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
    assert err.value.exit_code == 5


def test_pin_status_answered_with_data_is_a_card_data_error():
    card = HostileCard(load_card("adult"), "wrong-length", after=10**6)
    session = SocialSecurityCard(MemoryConnection(card))
    session.verify_pin(ADULT_PIN)
    _spoiled_from_now(card)
    with pytest.raises(CardDataError, match="answered VERIFY with"):
        session.pin_tries_left()


def test_cli_verify_pin_answered_with_data_exits_5():
    # after=2: SELECT and its GET RESPONSE (T=0) are genuine, the VERIFY is spoiled
    result = sscard("verify-pin", "--reader", "sim:hostile:wrong-length:adult:2", input=ADULT_PIN + "\n")
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
