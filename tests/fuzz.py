"""Fuzz targets for every parser that takes bytes from outside, and an atheris entry point.

Each target takes arbitrary bytes and feeds them to one parser. The property is the same for all:
malformed input raises one of our typed errors (:class:`apdu.errors.SSCardError`) and nothing else
escapes; well-formed input round-trips. tests/test_fuzz.py drives these targets with hypothesis in CI
(a fixed example count per target); this script drives them with atheris (coverage-guided, libFuzzer)
for as long as you like, outside CI:

    /tmp/v/bin/pip install atheris
    python tests/fuzz.py command -atheris_runs=1000000       # one target; libFuzzer flags after it
    python tests/fuzz.py --list

A crash is an exception other than SSCardError (or an assertion of a round trip): libFuzzer writes the
input to ``crash-*``; replay it with ``python tests/fuzz.py TARGET crash-...``.
"""
from __future__ import annotations

import json
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sscard.apdu.command import Command
from sscard.apdu.errors import SSCardError
from sscard.apdu.response import Response
from sscard.apdu.tlv import ber_decode, ber_find, decode_simple, encode_simple


def command(data: bytes) -> None:
    """C-APDU parser (ISO 7816-4 s5.1 cases 1-4, short and extended): parse, then round trip."""
    parsed = Command.from_bytes(data)
    assert Command.from_bytes(parsed.to_bytes()) == parsed


def response(data: bytes) -> None:
    """R-APDU parser: data || SW1 SW2, byte for byte back."""
    assert Response.from_bytes(data).to_bytes() == data


def simple_tlv(data: bytes) -> None:
    """The card's 1-byte-tag records: what decodes re-encodes to the same items."""
    for padding in (True, False):
        record = decode_simple(data, allow_padding=padding)
        again = b"".join(encode_simple(tag, value) for tag, value in record.items())
        assert decode_simple(again, allow_padding=False) == record


def ber_tlv(data: bytes) -> None:
    """BER-TLV (bank application): decode, walk every constructed object, search a tag."""
    pending = ber_decode(data)
    depth = 0
    while pending and depth < 8:
        pending = [child for obj in pending for child in obj.children]
        depth += 1
    ber_find(data, 0x5A)


_profile_dir = tempfile.TemporaryDirectory(prefix="sscard-fuzz-")


def profile(data: bytes) -> None:
    """Card profile loader (JSON file -> validated profile): bytes as the file's content."""
    from sscard.drivers.simulator.profile import load_profile

    path = Path(_profile_dir.name) / "fuzzed.json"
    path.write_bytes(data)
    load_profile(path)


def profile_json(data: bytes) -> None:
    """Card profile validator on the bundled adult profile with one value replaced by fuzzed JSON."""
    from sscard.drivers.simulator.profile import locate, parse_profile

    base = json.loads(locate("adult").read_text(encoding="utf-8"))
    if not data:
        return
    try:
        value = json.loads(data[1:].decode("utf-8", "replace"))
    except (json.JSONDecodeError, RecursionError):
        value = data[1:].decode("latin-1")
    paths = list(_json_paths(base))
    path = paths[data[0] % len(paths)]
    target = base
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    parse_profile(base, "fuzzed")


def _json_paths(node: object, prefix: tuple = ()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _json_paths(value, prefix + (i,))


def vpcd_frames(data: bytes) -> None:
    """The vpcd frame reader: a byte stream from pcscd's driver, read frame by frame to EOF."""
    from sscard.drivers.vpcd import read_frame

    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        while (payload := read_frame(ours)) is not None:
            assert 0 < len(payload) <= 0xFFFF
    finally:
        ours.close()
        theirs.close()


class ScriptedCard:
    """A card that answers SELECT with 9000 and every other command with the next fuzzed answer."""

    atr = bytes.fromhex("3B6800000073C84013009000")

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers

    def power_up(self) -> None: ...

    def power_down(self) -> None: ...

    def reset(self) -> None: ...

    def execute(self, apdu: bytes) -> bytes:
        if apdu[1:2] == b"\xa4":
            return b"\x90\x00"
        return self.answers.pop(0) if self.answers else b"\x6a\x83"


def card_records(data: bytes) -> None:
    """The card session on hostile answers: records (FE-separated) with any bytes, any status word."""
    from sscard.drivers.memory import MemoryConnection
    from sscard.terminal.card import SocialSecurityCard

    answers = [chunk + b"\x90\x00" if i % 3 else chunk for i, chunk in enumerate(data.split(b"\xfe"))]
    SocialSecurityCard(MemoryConnection(ScriptedCard(answers))).read_identity()


#: a valid settlement as the uploader sends it (docs/central-api.md, "Envelope"), the seed of the
#: central-request inputs; its sign_no is signed in on the fuzzed service's ledger
MESSAGE = {
    "infno": "2102", "msgid": "H11010500001202603010930000001", "mdtrtarea_admvs": "110105",
    "insuplc_admdvs": "310101", "opter_type": "1", "opter": "D001", "opter_name": "王医生",
    "inf_time": "2026-03-01 09:30:00", "fixmedins_code": "H11010500001", "fixmedins_name": "北京测试医院",
    "sign_no": "SIGNED", "input": {"data": {"psn_no": "1101000000000009", "insutype": "310", "med_type": "41",
                                            "medfee_sumamt": "23.50", "chrg_bchno": "T1"}},
}
_ledger = None


def central_request(data: bytes) -> None:
    """The reference service's request parser and ledger: first byte picks the path, the rest is the body.

    BadRequest (HTTP 400/404/413), Unsigned (401) and Unanswerable (422) are its typed refusals; any
    message that gets through is answered once, with an integer infcode, and a repeat gets the same answer.
    """
    from sscard.central import BadRequest, Forbidden, Ledger, Unanswerable, Unsigned, parse_request

    global _ledger
    if _ledger is None:
        _ledger = Ledger(Path(_profile_dir.name) / "central.sqlite")
        _ledger.conn.execute("INSERT OR IGNORE INTO signins VALUES ('SIGNED', 'H11010500001', 'D001', 7, '', 'now', NULL)")
    path = ("/api/batch", "/api/call", "/api/other")[data[0] % 3] if data else "/api/call"
    try:
        messages, single = parse_request(path, data[1:])
        answers = _ledger.process("H11010500001", messages, batch=not single)
    except (BadRequest, Forbidden, Unanswerable, Unsigned):
        return
    assert len(answers) == len(messages) and all(type(a["infcode"]) is int for a in answers)
    if single:
        assert len(answers) == 1


def central_reply(data: bytes) -> None:
    """The uploader's reply parser: a batch reply's bytes to per-record outcomes for the msgids sent."""
    from sscard.terminal.upload import batch_outcomes, parse_reply

    sent = {MESSAGE["msgid"], "H11010500001202603010930000002"}
    for outcome in batch_outcomes(parse_reply(data), sent):
        assert outcome.msgid in sent and type(outcome.infcode) is int and isinstance(outcome.err_msg, str)


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__.replace("_", "-"): f
    for f in (command, response, simple_tlv, ber_tlv, profile, profile_json, vpcd_frames, card_records,
              central_request, central_reply)
}


def run(target: Callable[[bytes], None], data: bytes) -> None:
    """One input: our typed errors are the expected outcome of malformed data; anything else is a bug."""
    try:
        target(data)
    except SSCardError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list"):
        print(__doc__)
        print("targets:", ", ".join(TARGETS))
        return 0
    target = TARGETS.get(argv[1])
    if target is None:
        print(f"unknown target {argv[1]!r}; targets: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    import atheris

    for module in ("sscard.drivers.simulator.profile", "sscard.drivers.vpcd", "sscard.drivers.memory", "sscard.terminal.card",
                   "sscard.central", "sscard.terminal.upload"):
        __import__(module)  # imported now so that instrument_all covers them
    atheris.instrument_all()  # coverage feedback for every loaded Python function
    atheris.Setup([argv[0], *argv[2:]], lambda data: run(target, data))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
