"""The two-step read of ``sscard serve`` (``iReadCardBas_HSM_Step1`` / ``Step2``, terminal/hsmread.py):
hospital software carries the card's randoms to its remote security module (here the virtual
platform's key service on a loopback port, asked as HIS code would) and its answers back."""
from __future__ import annotations

import time

import httpx
import pytest
from flowing import platform  # noqa: F401  (fixture)

from sscard.apdu.crypto import diversification_data
from sscard.terminal import hsmread
from sscard.terminal.gateway import test_credentials as credentials_of
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.service import ReaderService, load_token
from sscard.terminal.upload import CentralClient

CLINIC = "H33030200001"
STEP1, STEP2 = "iReadCardBas_HSM_Step1", "iReadCardBas_HSM_Step2"


@pytest.fixture
def token(tmp_path):
    return load_token(tmp_path / "service.token")


def served(token: str, reader: str) -> ReaderService:
    return ReaderService(reader=reader, token=token, keys=SoftwareKeyStore.bundled_test_keys(), terminal_no=3,
                         device="DEV-TEST")


def call(service: ReaderService, token: str, message: dict) -> dict:
    answer = httpx.post(f"{service.url}/api/convention", json=message, timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    return answer.json()


class KeyService:
    """The hospital's side: its remote security module asked with Step1's fields."""

    def __init__(self, url: str) -> None:
        self.client = CentralClient(url, credentials=credentials_of(CLINIC), timeout=10)

    def answers(self, out: str, *, tamper: str = "") -> str:
        region, _historical, algorithm, code, r1, r2, r3, r4, rest = out.split("|")
        assert rest == "" and region == code[:6]
        name = {"01": "3DES", "03": "SM4"}[algorithm]
        keys = []
        for usage, data in (("internal_auth", r1 + r2), ("external_auth", r3 + r4)):
            if not data:
                keys.append("")
                continue
            answer = self.client.post("/api/keys/encrypt", {
                "usage": usage, "algorithm": name, "data": data,
                "diversification": diversification_data(bytes.fromhex(code)).hex().upper()})
            keys.append(answer["cryptogram"])
        if tamper:
            index = 0 if tamper == "internal" else 1
            keys[index] = ("0" if keys[index][0] != "0" else "1") + keys[index][1:]
        return "".join(f"{key}|" for key in keys)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def hsm(platform):
    service = KeyService(platform.url)
    yield service
    service.close()


@pytest.mark.parametrize(("profile", "algorithm", "half"), [("adult", "01", 8), ("other-region", "03", 16)])
def test_two_steps_with_the_key_service_read_what_iReadCardBas_reads(token, hsm, profile, algorithm, half):
    with served(token, f"sim:{profile}") as service:
        whole = call(service, token, {"function": "iReadCardBas", "iType": 1})
        first = call(service, token, {"function": STEP1, "iType": 1})
        assert first["success"], first
        fields = first["pOutInfo"].split("|")
        assert fields[2] == algorithm and len(fields[4]) == len(fields[5]) == half
        third_generation = profile == "other-region"
        assert (len(fields[6]), len(fields[7])) == ((half, half) if third_generation else (0, 0))
        again = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"].split("|")
        assert again[4:6] != fields[4:6]  # a fresh random each time
        second = call(service, token, {"function": STEP2, "pKey": hsm.answers("|".join(again))})
    assert second == {**whole, "function": STEP2}, second
    assert whole["success"] and whole["pOutInfo"].count("|") == 11


def test_a_counterfeit_card_fails_step2_and_a_wrong_external_answer_is_refused_by_the_card(token, hsm):
    with served(token, "sim:counterfeit") as service:
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        answer = call(service, token, {"function": STEP2, "pKey": hsm.answers(out)})
    assert answer["code"] == -21 and "counterfeit" in answer["pOutInfo"].lower()
    with served(token, "sim:other-region") as service:
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        answer = call(service, token, {"function": STEP2, "pKey": hsm.answers(out, tamper="external")})
        assert answer["success"] is False and "refused this terminal's authentication" in answer["pOutInfo"]
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        answer = call(service, token, {"function": STEP2, "pKey": hsm.answers(out, tamper="internal")})
        assert answer["code"] == -21
        assert "440304199007123447" not in str(answer)


def test_step2_needs_its_own_step1_in_time_and_answers_of_the_right_shape(token, hsm, monkeypatch):
    with served(token, "sim:other-region") as service:
        alone = call(service, token, {"function": STEP2, "pKey": "00|"})
        assert alone["code"] == -99 and f"call {STEP1} first" in alone["pOutInfo"]
        assert call(service, token, {"function": STEP2})["code"] == -99  # no pKey at all
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        call(service, token, {"function": "iReadCardBas", "iType": 1})  # another call ends the held session
        assert "first" in call(service, token, {"function": STEP2, "pKey": hsm.answers(out)})["pOutInfo"]
        for p_key in ("ZZ|", "00|11|22|", hsm.answers(out).split("|")[0] + "|"):  # SM4 card: two answers
            out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
            bad = call(service, token, {"function": STEP2, "pKey": p_key})
            assert bad["code"] == -99 and "pKey is two cryptograms of 32 hex digits" in bad["pOutInfo"], bad
        monkeypatch.setattr(hsmread, "HELD_S", 0.0)
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        late = call(service, token, {"function": STEP2, "pKey": hsm.answers(out)})
        assert late["code"] == -99 and ("call iReadCardBas_HSM_Step1 again" in late["pOutInfo"]
                                        or "call iReadCardBas_HSM_Step1 first" in late["pOutInfo"])


def test_a_held_card_session_is_let_go_of_when_step2_does_not_come(token, monkeypatch):
    monkeypatch.setattr(hsmread, "HELD_S", 0.3)
    with served(token, "sim:other-region") as service:
        assert call(service, token, {"function": STEP1, "iType": 1})["success"]
        assert service._held
        deadline = time.monotonic() + 5
        while service._held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not service._held  # let go of without any other call on the reader


def test_step1_on_a_card_that_is_not_a_social_security_card_is_refused_and_holds_nothing(token):
    with served(token, "sim:psam") as service:
        assert call(service, token, {"function": STEP1, "iType": 1})["code"] == -1
        assert not service._held


@pytest.mark.pcsc
def test_two_steps_over_pcscd_hold_the_card_session_and_a_card_pulled_between_them_is_no_card(pcscd, vpcd_card,
                                                                                             token, hsm):
    card = vpcd_card("other-region")
    with served(token, "Virtual PCD 00 00") as service:
        whole = call(service, token, {"function": "iReadCardBas", "iType": 1})
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        second = call(service, token, {"function": STEP2, "pKey": hsm.answers(out)})
        assert whole["success"] and second == {**whole, "function": STEP2}
        out = call(service, token, {"function": STEP1, "iType": 1})["pOutInfo"]
        card.remove()  # pulled before Step2
        pulled = call(service, token, {"function": STEP2, "pKey": hsm.answers(out)})
        assert pulled["success"] is False and pulled["code"] in (-2, -4), pulled
        assert not service._held
