"""Virtual cards that remember (drivers/simulator/state.py): a ``sim:`` card keeps its PIN, tries,
activation and records from command to command, in memory and over pcscd + vpcd, until
``sscard simulate reset``; its state files are private; a damaged or unwritable one is said in words."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flowing import configs, platform  # noqa: F401  (fixtures)

from sscard.apdu.commands import SSC_DF_NAME
from sscard.drivers.simulator import load_card
from sscard.drivers.simulator.state import STATE_ENV, state_folder
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli import main
from sscard.terminal.readers import open_connection

ROOT = Path(__file__).resolve().parents[1]
PIN = json.loads((ROOT / "fixtures/cards/adult.json").read_text(encoding="utf-8"))["pin"]["value"]
NEW_PIN = "902468"
READER0 = "Virtual PCD 00 00"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def sscard(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                          input=input, capture_output=True, text=True, timeout=60)


def test_a_changed_pin_and_spent_tries_hold_across_commands_until_reset():
    changed = run("change-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n{NEW_PIN}\n")
    assert changed.exit_code == 0, changed.output
    old = run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n")
    assert old.exit_code == 6 and "2 tries left" in old.output  # the old PIN no longer works
    again = run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n")
    assert again.exit_code == 6 and "1 try left" in again.output  # the try spent before is still spent
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{NEW_PIN}\n").exit_code == 0
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input="000000\n").output.count("2 tries left") == 1
    # the other cards are untouched; the Python API's cards are fresh
    assert run("verify-pin", "-r", "sim:minority", "--pin-stdin", input="000000\n").output.count("2 tries left") == 1
    assert load_card("adult").persistent_state()["pin"] == PIN
    reset = run("simulate", "reset", "adult", "--json")
    assert reset.exit_code == 0 and json.loads(reset.stdout)["reset"] == ["adult.json"]
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n").exit_code == 0
    assert "it had remembered nothing" in run("simulate", "reset", "adult").output


def test_three_wrong_pins_in_three_commands_block_the_card():
    codes = [run("verify-pin", "-r", "sim:adult", "--pin-stdin", input="000000\n").exit_code for _ in range(3)]
    assert codes == [6, 6, 7]
    blocked = run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n")
    assert blocked.exit_code == 7 and "blocked" in blocked.output


def test_an_activation_holds_and_a_second_one_is_refused(configs):
    env = {"SSCARD_CONFIG": str(configs["bank"])}
    args = ["bank", "activate", "-r", "sim:not-activated-zhou", "--pin-stdin"]
    first = CliRunner().invoke(main, args, input="330303196811052226\n386152\n386152\n", env=env)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, args, input="330303196811052226\n386152\n386152\n", env=env)
    assert second.exit_code == 15 and "already activated" in second.output
    with open_connection("sim:not-activated-zhou") as connection:
        identity = SocialSecurityCard(connection).read_identity()
    assert identity.activated is True


def test_the_state_is_private_and_names_the_profile():
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input="000000\n").exit_code == 6
    folder = state_folder()
    (saved,) = folder.iterdir()
    assert saved.name == "adult.json" and stat.S_IMODE(saved.stat().st_mode) == 0o600
    document = json.loads(saved.read_text(encoding="utf-8"))
    assert document["profile"] == "adult" and document["test_only"] is True
    assert document["state"]["pin_tries_left"] == 2


def test_a_fresh_state_folder_is_created_0700(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "new" / "sim"))
    old = os.umask(0o022)
    try:
        assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input="000000\n").exit_code == 6
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "sim").stat().st_mode) == 0o700


def test_a_damaged_state_is_refused_in_words_and_reset_heals_it():
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input="000000\n").exit_code == 6
    saved = state_folder() / "adult.json"
    document = json.loads(saved.read_text(encoding="utf-8"))
    not_a_state = json.dumps({**document, "state": {**document["state"], "pin_tries_left": 9}}).encode()
    for damage in (b"{not json", b"\xff\xfe", b"[]", not_a_state):
        saved.write_bytes(damage)
        result = run("read", "-r", "sim:adult")
        assert result.exit_code == 12, (damage, result.output)
        assert "damaged" in result.output and "sscard simulate reset adult" in result.output
        assert "Traceback" not in result.output
    assert run("simulate", "reset", "adult").exit_code == 0
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n").exit_code == 0


def test_a_state_that_cannot_be_written_is_a_memory_failure_and_nothing_changes(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "a-file" / "sim"))  # no folder can be made there, even as root
    changed = run("change-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n{NEW_PIN}\n")
    assert changed.exit_code == 5 and "Memory failure on the card" in changed.output
    assert "Traceback" not in changed.output
    card = load_card("adult")
    from sscard.drivers.simulator.state import RememberedCard, StateFile

    remembered = RememberedCard(card, StateFile("adult", ROOT / "fixtures/cards/adult.json"))
    remembered.power_up()
    assert remembered.execute(bytes.fromhex("00200000") + bytes([3]) + bytes.fromhex("000000")) == bytes.fromhex("6581")
    assert card.pin_tries_left == 3  # the wrong PIN's try was undone with the write that failed
    select = bytes.fromhex("00A4040C0F") + SSC_DF_NAME
    assert remembered.execute(select)[-2:] == b"\x90\x00"
    card.pin_tries_left = 2  # as after a wrong PIN that was written: the right one now resets the count
    remembered._saved = card.persistent_state()
    pin_block = bytes.fromhex(PIN)
    assert remembered.execute(bytes.fromhex("00200000") + bytes([3]) + pin_block) == bytes.fromhex("6581")
    assert not card.pin_verified and card.pin_tries_left == 2  # not written: neither verified nor reset


def test_a_full_disk_under_the_state_is_a_memory_failure_and_the_pin_unchanged():
    def small_files() -> None:  # files of at most 100 bytes: the state's write fails (EFBIG), as on a full disk
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    changed = subprocess.run([sys.executable, "-B", "-c", "from sscard.terminal.cli import main; main()", "change-pin", "-r",
                              "sim:adult", "--pin-stdin"], input=f"{PIN}\n{NEW_PIN}\n", capture_output=True,
                             text=True, timeout=60, preexec_fn=small_files)
    assert changed.returncode == 5 and "Memory failure on the card" in changed.stderr, changed.stderr
    assert "Traceback" not in changed.stderr
    assert run("verify-pin", "-r", "sim:adult", "--pin-stdin", input=f"{PIN}\n").exit_code == 0
    assert not any(state_folder().glob(".state-*"))  # no half-written file left


def test_a_changed_profile_starts_from_its_factory_state(tmp_path):
    profile = tmp_path / "mine.json"
    profile.write_text((ROOT / "fixtures/cards/adult.json").read_text(encoding="utf-8"), encoding="utf-8")
    spec = f"sim:{profile}"
    assert run("verify-pin", "-r", spec, "--pin-stdin", input="000000\n").output.count("2 tries left") == 1
    assert run("verify-pin", "-r", spec, "--pin-stdin", input="000000\n").output.count("1 try left") == 1
    (saved,) = state_folder().iterdir()
    assert saved.name.startswith("mine-") and saved.suffix == ".json"
    profile.write_text(profile.read_text(encoding="utf-8").replace('"description": "', '"description": "edited: '),
                       encoding="utf-8")
    assert run("verify-pin", "-r", spec, "--pin-stdin", input="000000\n").output.count("2 tries left") == 1


def test_an_old_medical_card_remembers_it_was_replaced(configs):
    env = {"SSCARD_CONFIG": str(configs["clinic"])}
    moved = CliRunner().invoke(main, ["pharmacy", "activate", "--old-reader", "sim:old-medical-lina", "-r",
                                      "sim:not-activated", "--pin-stdin"], input="123456\n", env=env)
    assert moved.exit_code == 0, moved.output
    from sscard.drivers.simulator.oldmedical import OldMedicalCard
    from sscard.drivers.simulator.state import remembered_card

    card = remembered_card("old-medical-lina")
    assert isinstance(card.inner, OldMedicalCard) and card.inner.replaced


# --- over pcscd + vpcd: the card in an `sscard simulate` process ---------------------------------

def test_over_vpcd_a_pin_change_holds_across_simulator_runs_and_in_memory(vpcd_card):
    card = vpcd_card("adult", process=True)
    changed = sscard("change-pin", "--reader", READER0, "--pin-stdin", input=f"{PIN}\n{NEW_PIN}\n")
    assert changed.returncode == 0, changed.stderr
    wrong = sscard("verify-pin", "--reader", READER0, "--pin-stdin", input=f"{PIN}\n")
    assert wrong.returncode == 6 and "2 tries left" in wrong.stderr
    card.stop()
    vpcd_card("adult", process=True)  # the simulator started again: the same card
    again = sscard("verify-pin", "--reader", READER0, "--pin-stdin", input=f"{PIN}\n")
    assert again.returncode == 6 and "1 try left" in again.stderr
    assert sscard("verify-pin", "--reader", READER0, "--pin-stdin", input=f"{NEW_PIN}\n").returncode == 0
    # the in-memory reader of the same profile is the same card
    assert sscard("verify-pin", "--reader", "sim:adult", "--pin-stdin", input=f"{NEW_PIN}\n").returncode == 0


@pytest.mark.parametrize("args", [["simulate", "--card", "adult", "reset"], ["simulate", "--port", "35963"]])
def test_simulate_options_and_reset_do_not_mix(args):
    result = run(*args)
    assert result.exit_code == 2 and ("takes no --card" in result.output or "Missing option '--card'" in result.output)


def test_over_vpcd_an_activation_holds_across_simulator_runs(vpcd_card, configs):
    env = {**os.environ, "SSCARD_CONFIG": str(configs["bank"])}
    args = [sys.executable, "-c", "from sscard.terminal.cli import main; main()", "bank", "activate", "--reader", READER0,
            "--pin-stdin"]
    card = vpcd_card("not-activated-zhou", process=True)
    first = subprocess.run(args, input="330303196811052226\n386152\n386152\n", capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    card.stop()
    vpcd_card("not-activated-zhou", process=True)  # the simulator started again: the same card
    second = subprocess.run(args, input="330303196811052226\n386152\n386152\n", capture_output=True, text=True, timeout=60, env=env)
    assert second.returncode == 15 and "already activated" in second.stderr
    in_memory = sscard("read", "--reader", "sim:not-activated-zhou", "--json")
    assert json.loads(in_memory.stdout)["activated"] is True
