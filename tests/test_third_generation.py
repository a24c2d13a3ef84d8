"""Third-generation cards (spec 3.00, SM4): the holder's data only after the terminal authenticated
itself (EXTERNAL AUTHENTICATE; the reader libraries' -2203), with the PSAM, with a key file, and
refused in words without keys or with the wrong ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sscard.apdu.errors import TerminalAuthenticationError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import unlocker
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.convention import EXTERNAL_AUTH_NEEDED, code_of
from sscard.terminal.errors import ExternalAuthenticationRequiredError, KeyStoreError
from sscard.terminal.keystore import SoftwareKeyStore, open_key_store

ROOT = Path(__file__).resolve().parents[1]
CHEN_JING = "440304199007123447"


def card() -> SocialSecurityCard:
    return SocialSecurityCard(MemoryConnection(load_card("other-region")))


def test_without_a_key_store_the_holders_data_is_not_asked_for():
    with pytest.raises(ExternalAuthenticationRequiredError, match="third-generation card") as refused:
        card().read_identity()
    assert exit_code(refused.value) == 8 and code_of(refused.value) == EXTERNAL_AUTH_NEEDED == -2203


@pytest.mark.parametrize("store", ["test", "psam", "key-file"])
def test_read_after_authentication_with_each_key_store(store, tmp_path):
    key_file = tmp_path / "keys.json"
    shutil.copyfile(ROOT / "fixtures" / "keys" / "test-keys.json", key_file)
    key_file.chmod(0o600)
    args = {"test": {}, "psam": {"psam": "sim:psam"}, "key-file": {"key_file": key_file}}[store]
    with open_key_store(**args) as keys:
        session = card()
        identity = session.read_identity(unlocker(keys))
    assert identity.social_security_number == CHEN_JING and session.connection.security_raised


def test_the_wrong_keys_are_refused_by_the_card_in_words(tmp_path):
    other = json.loads((ROOT / "fixtures" / "keys" / "test-keys.json").read_text(encoding="utf-8"))
    for usage in other["master_keys"].values():
        for name, key in usage.items():
            usage[name] = ("00" if key[:2] != "00" else "11") + key[2:]
    wrong = tmp_path / "wrong-keys.json"
    wrong.write_text(json.dumps(other), encoding="utf-8")
    wrong.chmod(0o600)
    with pytest.raises(TerminalAuthenticationError, match="refused this terminal's authentication"):
        card().read_identity(unlocker(SoftwareKeyStore.from_file(wrong)))


def test_sscard_read_authenticates_with_the_configured_key_store(tmp_path, monkeypatch):
    config = tmp_path / "terminal.toml"
    assert CliRunner().invoke(main, ["config", "init", "--config", str(config), "--terminal-number", "3"]).exit_code == 0
    config.write_text(config.read_text(encoding="utf-8").replace('store = "test"', 'store = "psam:sim:psam"'),
                      encoding="utf-8")
    monkeypatch.setenv("SSCARD_CONFIG", str(config))
    result = CliRunner().invoke(main, ["read", "--reader", "sim:other-region", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["social_security_number"] == CHEN_JING
    assert "TEST keys" not in result.stderr  # the configured PSAM, not the TEST keys


def test_sscard_read_of_a_second_generation_card_opens_no_key_store(monkeypatch):
    monkeypatch.setenv("SSCARD_CONFIG", "/nonexistent/terminal.toml")
    result = CliRunner().invoke(main, ["read", "--reader", "sim:adult"])
    assert result.exit_code == 0 and "TEST keys" not in result.stderr


def test_test_keys_never_authenticate_to_a_card_in_a_real_reader():
    """Their cryptogram would be wrong: a real card would spend one of its tries for good."""
    class RealReader(MemoryConnection):
        virtual = False  # as a card in a PC/SC reader that is not the simulator's

    chip = load_card("other-region")
    session = SocialSecurityCard(RealReader(chip))
    with pytest.raises(KeyStoreError, match="TEST keys") as refused:
        session.read_identity(unlocker(SoftwareKeyStore.bundled_test_keys()))
    assert exit_code(refused.value) == 12
    assert chip.external_auth_tries_left == chip.external_auth_max_tries and chip.last_challenge is None
