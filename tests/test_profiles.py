"""Card profiles: every bundled one loads; every validation error names the file and the field."""
from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

from sscard.apdu.atr import build_atr, parse_atr
from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator import bundled_names, load_card, load_profile
from sscard.drivers.simulator.profile import id_check_digit, luhn_ok, parse_profile
from sscard.terminal.cli.exits import exit_code

CARDS = Path(__file__).resolve().parents[1] / "fixtures" / "cards"
REQUIRED = ["adult", "not-activated", "blocked-pin", "other-region", "minority", "counterfeit"]


def adult_json() -> dict:
    return json.loads((CARDS / "adult.json").read_text(encoding="utf-8"))


def test_the_names_others_use_are_bundled():
    assert set(REQUIRED) <= set(bundled_names())


@pytest.mark.parametrize("name", REQUIRED)
def test_bundled_profile_loads(name):
    profile = load_profile(name)
    assert "fictional" in profile.description
    assert profile.source == f"{name}.json"
    assert isinstance(profile.holder["birth_date"], dt.date)


def test_bundled_profiles_say_what_the_brief_says():
    adult, other = load_profile("adult"), load_profile("other-region")
    assert (adult.protocol, adult.algorithm, adult.state, adult.issuing_region) == ("T=0", "3DES", "active", "330300")
    assert (other.protocol, other.algorithm, other.issuing_region) == ("T=1", "SM4", "440300")
    assert load_profile("not-activated").state == "not_activated"
    assert load_profile("not-activated").pin.value == "123456"
    assert load_profile("blocked-pin").pin.tries_left == 0
    minority = load_profile("minority")
    assert minority.holder["ethnicity"] != "01" and minority.holder["name_extension"]
    assert len(minority.holder["name"].encode("gbk")) == 30
    counterfeit = load_profile("counterfeit")
    assert counterfeit.card == adult.card and counterfeit.holder == adult.holder
    assert set(counterfeit.keys) == set(adult.keys)
    assert all(counterfeit.keys[usage] != adult.keys[usage] for usage in adult.keys)


def test_load_by_path_and_by_name_agree(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text((CARDS / "adult.json").read_text(encoding="utf-8"), encoding="utf-8")
    by_path = load_profile(str(path))
    assert by_path.holder == load_profile("adult").holder and by_path.source == "mine.json"
    assert load_card(path).atr == load_card("adult").atr


def test_gb11643_check_digit():
    assert id_check_digit("11010519491231002") == "X"  # the standard's own example
    assert id_check_digit("33030219850615123") == "9"
    with pytest.raises(ValueError):
        id_check_digit("1234")


def test_luhn_and_atr_helpers():
    assert luhn_ok("6217003303001234565") and not luhn_ok("6217003303001234566")
    atr = build_atr("T=1", b"\x80\x01")
    assert parse_atr(atr).protocol == "T=1" and parse_atr(atr).historical == b"\x80\x01"
    with pytest.raises(ValueError, match="TCK"):
        parse_atr(atr[:-1] + bytes((atr[-1] ^ 1,)))


def mutate(path: str, value, delete: bool = False) -> dict:
    data = copy.deepcopy(adult_json())
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return data


BAD = [
    # (field path, new value or DELETE, words expected in the message)
    ("holder.social_security_number", "330302198506151238", "check digit"),
    ("holder.social_security_number", "33030219850615123", "18 characters"),
    ("card.issue_date", "2019/03/01", "YYYY-MM-DD"),
    ("card.expiry_date", "2029-02-30", "not a real date"),
    ("card.expiry_date", "2018-01-01", "after the issue date"),
    ("holder.birth_date", "1985-06-16", "does not match"),
    ("holder.sex", "2", "does not match"),
    ("holder.sex", "3", "GB/T 2261.1"),
    ("holder.ethnicity", "57", "GB 3304"),
    ("holder.ethnicity", "1", "GB 3304"),
    ("holder.name", "张" * 16, "over 30"),
    ("holder.birthplace", "3303", "6 digits"),
    ("card.card_identification_code", "330300D1560000050123456", "32 hex"),
    ("card.card_identification_code", "3303G0D15600000501234567FFFFFFFF", "32 hex"),
    ("card.card_identification_code", "ABCDEFD15600000501234567FFFFFFFF", "issuing region"),
    ("card.spec_version", "3.00", "algorithm 3DES"),
    ("card.card_number", "A0123456", "9 characters"),
    ("atr", "3B6Z00", "hex"),
    ("atr", "3B6D0000803180", "announce"),
    ("atr", build_atr("T=1", b"\x80").hex(), "protocol is T=0"),
    ("protocol", "T=2", "T=0, T=1"),
    ("algorithm", "AES", "3DES, SM4"),
    ("state", "blocked", "not_activated"),
    ("kind", "psam", "ssc"),
    ("pin.value", "12a456", "digits"),
    ("pin.value", "123", "digits"),
    ("pin.value", 123456, "digits"),
    ("pin.tries_left", 4, "0..3"),
    ("pin.max_tries", 0, "1..15"),
    ("keys", "test", "JSON object"),
    ("keys.internal_auth", "00112233", "32 hex digits"),
    ("keys.pin_reload", "00112233445566770011223344556677", "halves"),
    ("keys.master", "00112233445566778899AABBCCDDEEFF", "unknown key usage"),
    ("bank.pan", "6217003303001234566", "Luhn"),
    ("holder.nickname", "伟伟", "unknown field"),
    ("colour", "red", "unknown field"),
    ("pin.retries", 3, "unknown field"),
]


@pytest.mark.parametrize("path,value,words", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_each_validation_error_names_the_field(path, value, words):
    with pytest.raises(ProfileError) as err:
        parse_profile(mutate(path, value), "x.json")
    message = str(err.value)
    assert message.startswith(f"x.json: {path}: "), message
    assert words in message, message
    assert "330302198506151239" not in message and "330302198506151238" not in message  # ID masked
    assert exit_code(err.value) == 12


@pytest.mark.parametrize("path", ["holder.name", "card.card_number", "pin.value", "atr", "keys", "description"])
def test_missing_field_is_named(path):
    with pytest.raises(ProfileError) as err:
        parse_profile(mutate(path, None, delete=True), "x.json")
    assert str(err.value) == f"x.json: {path}: missing field"


def test_optional_items_and_bank_may_be_left_out():
    data = mutate("holder.birthplace", None, delete=True)
    del data["bank"]
    profile = parse_profile(data, "x.json")
    assert "birthplace" not in profile.holder and profile.bank_pan is None


def test_not_an_object():
    with pytest.raises(ProfileError, match="x.json: profile: must be a JSON object"):
        parse_profile([1, 2], "x.json")
    with pytest.raises(ProfileError, match="x.json: holder: must be a JSON object"):
        parse_profile(mutate("holder", "none"), "x.json")


def test_file_problems_are_profile_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"kind": "ssc",', encoding="utf-8")
    with pytest.raises(ProfileError, match=r"broken\.json: not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="no-such-card.*bundled: .*adult"):
        load_profile("no-such-card")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(str(tmp_path / "missing.json"))
    with pytest.raises(ProfileError, match="not a card profile name"):
        load_profile("Adult Card")
