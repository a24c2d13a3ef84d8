"""The old medical insurance card: profile validation, its card OS, and the terminal's session."""
from __future__ import annotations

import json

import pytest

from sscard.apdu import commands, oldmedical
from sscard.drivers.errors import ProfileError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import SimulatedCard, load_card
from sscard.drivers.simulator.oldmedical import OldMedicalProfile, load_old_card, old_profile_path
from sscard.message.envelope import Fen
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.oldcard import NotOldMedicalCardError, OldMedicalCardSession, WrongCardOrderError
from sscard.terminal.readers import open_connection

NAMES = ("old-medical-lina", "old-medical-zhangwei", "old-medical-replaced")


def profile_dict(name: str) -> dict:
    return json.loads(old_profile_path(name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_bundled_old_cards_read_back_as_their_profiles(name):
    data = profile_dict(name)
    old = OldMedicalCardSession(open_connection(f"sim:{name}")).read()
    assert (old.card_number, old.social_security_number, old.name, old.issuing_region) == (
        data["card_number"], data["social_security_number"], data["name"], data["issuing_region"])
    assert old.balance == Fen(data["balance_fen"]) and type(old.balance) is Fen
    assert old.replaced is (data["status"] == "replaced")
    assert isinstance(load_old_card(name), SimulatedCard)


def test_mark_replaced_only_where_the_issuer_allows_it():
    for name, allowed in (("old-medical-lina", True), ("old-medical-zhangwei", False)):
        reader = open_connection(f"sim:{name}")
        session = OldMedicalCardSession(reader)
        assert session.mark_replaced() is allowed
        assert session.read().replaced is allowed


def test_old_card_os_answers_iso_status_words():
    reader = MemoryConnection(load_old_card("old-medical-lina"))
    assert reader.transmit(oldmedical.get_balance()).sw == 0x6985  # before SELECT
    assert reader.transmit(commands.select_ssc()).sw == 0x6A82
    assert reader.transmit(oldmedical.select_old_medical()).sw == 0x9000
    assert reader.transmit(commands.read_record(1)).sw == 0x6986  # no current EF yet
    assert reader.transmit(commands.read_record(1, sfi=0x15)).data.startswith(b"\x01\x0eYB")
    assert reader.transmit(commands.read_record(6, sfi=0x15)).sw == 0x6A83
    assert reader.transmit(commands.update_record(1, b"\x01\x01A")).sw == 0x6982  # only the status record
    assert reader.transmit(commands.update_record(5, b"\x05\x01\x07")).sw == 0x6A80
    assert reader.transmit(oldmedical.get_balance()).data == (128650).to_bytes(4, "big")
    reader.card.power_down()
    reader.card.power_up()
    assert reader.transmit(oldmedical.get_balance()).sw == 0x6985  # volatile state cleared


def test_session_tells_a_social_security_card_from_anything_else():
    with pytest.raises(WrongCardOrderError) as err:
        OldMedicalCardSession(open_connection("sim:adult")).read()
    assert exit_code(err.value) == 15
    with pytest.raises(NotOldMedicalCardError):
        OldMedicalCardSession(MemoryConnection(load_card("psam"))).read()


@pytest.mark.parametrize(("field", "value"), [
    ("balance_fen", 12.5), ("balance_fen", -1), ("balance_fen", True), ("status", "lost"),
    ("social_security_number", "1234"), ("issuing_region", "33030"), ("replaceable", "yes"),
    ("card_number", "yb-1"), ("protocol", "T=2"), ("atr", "zz"), ("kind", "ssc"),
])
def test_profile_validation_names_the_field(field, value):
    data = {**profile_dict("old-medical-lina"), field: value}
    with pytest.raises(ProfileError, match=field):
        OldMedicalProfile.from_dict(data, "test")


def test_profile_unknown_and_missing_fields():
    data = profile_dict("old-medical-lina")
    with pytest.raises(ProfileError, match="pin"):
        OldMedicalProfile.from_dict({**data, "pin": "1"}, "test")
    del data["name"]
    with pytest.raises(ProfileError, match="name"):
        OldMedicalProfile.from_dict(data, "test")
    with pytest.raises(ProfileError, match="No old medical"):
        load_old_card("adult")
