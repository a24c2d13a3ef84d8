"""docs/card-profile.md, "Worked examples" of "Keys and security": every hex line is recomputed.

Each ```text security-example USAGE PROFILE``` block is parsed; the test checks the primitives
(apdu.crypto), the card key against the profile, the terminal's APDU builders, and sends the exact
APDUs of the document to the virtual card and the virtual PSAM, comparing their answers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sscard.apdu import commands
from sscard.apdu.command import Command
from sscard.apdu.crypto import Algorithm, card_key, diversification_data, session_key, session_mac
from sscard.apdu.keyset import KeyUsage, parse_master_keys, psam_key_version
from sscard.apdu.pin import pin_to_bcd
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import SSCCard, load_card, load_profile

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "card-profile.md"
TEST_KEYS = parse_master_keys(json.loads((ROOT / "fixtures/keys/test-keys.json").read_text())["master_keys"])
RELOAD_EXAMPLE_PIN = "271828"  # the M line of the pin_reload example says so


def examples() -> list[tuple[str, str, dict[str, bytes]]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```text security-example (\w+) ([\w-]+)\n(.*?)^```", text, flags=re.S | re.M)
    out = []
    for usage, profile, body in blocks:
        values = {}
        for line in body.splitlines():
            label, _, rest = line.partition("=")
            values[label.strip()] = bytes.fromhex(rest.split("#")[0].replace(" ", ""))
        out.append((usage, profile, values))
    return out


EXAMPLES = examples()


def test_the_document_has_an_example_of_every_key():
    assert sorted(usage for usage, _, _ in EXAMPLES) == sorted(u.label for u in KeyUsage)
    assert {load_profile(p).algorithm for _, p, _ in EXAMPLES} == {"3DES", "SM4"}


@pytest.mark.parametrize("usage,profile,v", EXAMPLES, ids=[f"{u}-{p}" for u, p, _ in EXAMPLES])
def test_worked_example(usage, profile, v):
    key_usage = KeyUsage.by_label(usage)
    card_profile = load_profile(profile)
    algorithm = Algorithm(card_profile.algorithm)
    # keys
    assert v["MK"] == TEST_KEYS[(algorithm, key_usage)]
    assert v["CIC"].hex().upper() == card_profile.card["card_identification_code"]
    assert v["D"] == diversification_data(v["CIC"])
    assert v["DK"] == card_key(v["MK"], v["CIC"], algorithm) == card_profile.keys[key_usage]
    challenge, result = v["CHALLENGE"], v["RESULT"]
    # the card, its challenge fixed to the document's
    chip = SSCCard(card_profile, random=lambda n: challenge)
    card = MemoryConnection(chip)
    assert card.transmit(commands.select_ssc()).sw in (0x9000, 0x6283)
    if key_usage.for_mac:
        assert v["SK"] == session_key(v["DK"], challenge, b"", algorithm)
        assert result == session_mac(v["DK"], challenge, v["M"], algorithm)
        if key_usage is KeyUsage.PIN_RELOAD:
            assert v["M"] == commands.reload_pin_mac_input(pin_to_bcd(RELOAD_EXAMPLE_PIN))
            assert v["APDU"] == commands.reload_pin(pin_to_bcd(RELOAD_EXAMPLE_PIN), result).to_bytes()
        else:
            assert v["M"] == commands.application_unblock_mac_input()
            assert v["APDU"] == commands.application_unblock(result).to_bytes()
        assert card.transmit(commands.get_challenge(len(challenge))).data == challenge
        assert chip.execute(v["APDU"]) == b"\x90\x00"
        assert v["PSAM_INIT"] == commands.psam_des_init(key_usage.code, psam_key_version(algorithm), v["D"],
                                                        challenge).to_bytes()
        assert v["PSAM_CRYPT"] == commands.psam_des_crypt(commands.PSAM_MODE_MAC, v["M"]).to_bytes()
    else:
        assert result == algorithm.encrypt_block(v["DK"], challenge)
        if key_usage is KeyUsage.INTERNAL_AUTH:
            assert v["APDU"] == commands.internal_authenticate(key_usage.key_id, challenge).to_bytes()
            assert card.transmit(Command.from_bytes(v["APDU"])).check().data == result
        else:
            assert v["APDU"] == commands.external_authenticate(key_usage.key_id, result).to_bytes()
            assert card.transmit(commands.get_challenge(len(challenge))).data == challenge
            assert chip.execute(v["APDU"]) == b"\x90\x00" and chip.external_authenticated
        assert v["PSAM_INIT"] == commands.psam_des_init(key_usage.code, psam_key_version(algorithm), v["D"]).to_bytes()
        assert v["PSAM_CRYPT"] == commands.psam_des_crypt(commands.PSAM_MODE_ENCRYPT, challenge).to_bytes()
    # the PSAM, given exactly the document's bytes (GET RESPONSE as T=0 needs it)
    psam = load_card("psam")
    psam.power_up()
    assert psam.execute(v["PSAM_INIT"]) == b"\x90\x00"
    pending = psam.execute(v["PSAM_CRYPT"])
    assert pending == bytes((0x61, len(result)))
    assert psam.execute(bytes((0x00, 0xC0, 0x00, 0x00, len(result)))) == result + b"\x90\x00"
