"""``sscard serve``'s API driven by hypothesis over HTTP (EXAMPLES requests in CI): every endpoint given
random JSON and mutated valid bodies. The property: every answer is JSON in the documented shape (the
convention's reply, a result, or ``{"error": {"code", "exit_code", "message"}}``), never a 500 or an
internal error, never exit code 1; and the service still reads a card afterwards. A real service on
a loopback port, with a terminal configuration and the virtual platform behind it."""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from flowing import write_config
from hypothesis import HealthCheck, given, settings, strategies as st

from sscard.central import CentralService
from sscard.terminal.config import load_config
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.service import ReaderService, load_token

#: generated requests in CI (issue 13: at least 2,000)
EXAMPLES = 2000
#: endpoint -> a valid body (docs/service.md)
VALID: dict[str, dict[str, Any]] = {
    "/api/convention": {"function": "iReadCardBas", "iType": 3},
    "/api/read": {"reader": "sim:adult"},
    "/api/auth": {},
    "/api/verify-pin": {"pin": "246810"},
    "/api/register": {"type": "outpatient", "department": "内科", "pin": "246810"},
    "/api/settle": {"visit": "MD1", "bill": "B1", "items": [{"name": "诊查费", "count": 1, "price": "20.00"}],
                    "pin": "246810"},
    "/api/purchase": {"sale": "S1", "items": [{"name": "药", "count": 1, "price": "3.50"}], "pin": "246810"},
    "/api/refund": {"sale": "S1"},
    "/api/reconcile": {"date": "2026-03-01"},
    "/api/queue": {},
}
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                    | st.text(max_size=40), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
ODD = st.one_of(JSON, st.sampled_from(["", "x" * 70000, "sim:" + "x" * 300, "hostile:mute:adult", "../../etc/passwd",
                                       "\x00", "-1", "1e400", "iReadCardBas_HSM_Step2", 3, -1, 2 ** 64]))


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service-fuzz")
    token = load_token(folder / "service.token")
    with CentralService(folder / "platform.sqlite") as platform:
        config = load_config(write_config(folder / "clinic", central=platform.url))
        with ReaderService(reader="sim:adult", token=token, keys=SoftwareKeyStore.bundled_test_keys(), config=config,
                           terminal_no=3, device="DEV-FUZZ", busy_wait=2, card_timeout=5) as service:
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                yield client


@st.composite
def request(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(VALID)))
    shape = draw(st.sampled_from(("mutated", "random", "bytes")))
    if shape == "bytes":
        return path, draw(st.binary(max_size=200))
    if shape == "random":
        return path, json.dumps(draw(JSON)).encode()
    body = dict(VALID[path])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*body, "function", "iType", "reader", "pKey", "pin", "confirm", "x"]))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(ODD)
    return path, json.dumps(body, ensure_ascii=False).encode()


def test_any_request_is_answered_in_the_documented_shape_never_a_500(counter):
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request())
    def run(sent: tuple[str, bytes]) -> None:
        path, body = sent
        answer = counter.post(path, content=body, headers={"Content-Type": "application/json"})
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code < 500 or answer.status_code == 503, (path, body[:200], answer.text[:300])
        reply = answer.json()
        if path == "/api/convention" and "error" not in reply:  # the guard's refusals (413, 403) are error objects
            assert set(reply) == {"function", "success", "code", "pOutInfo"}, reply
            assert reply["code"] != -99 or "internal" not in reply["pOutInfo"], (body[:200], reply)
        elif "error" in reply:
            assert answer.status_code >= 400, (path, answer.status_code)
            error = reply["error"]
            assert set(error) == {"code", "exit_code", "message"} and error["code"] != "internal", (body[:200], reply)
            assert error["exit_code"] not in (0, 1)
        else:
            assert answer.status_code == 200 and isinstance(reply, dict)

    run()
    assert seen.get(200) and len(seen) > 1, seen  # both the good and the refused were reached
    after = counter.post("/api/convention", json=VALID["/api/convention"]).json()
    assert after["success"] and after["pOutInfo"].startswith("330300|"), after
