"""Every parser of outside bytes, driven by hypothesis through the targets of tests/fuzz.py.

The property (tests/fuzz.py): malformed input raises our typed error and nothing else escapes;
well-formed input round-trips. Each target gets EXAMPLES generated inputs in CI, mixing raw bytes
with inputs shaped like the real thing (valid APDUs, TLVs, frames, records) then mutated, so the
parsers' deeper branches are reached too. atheris runs the same targets for longer: tests/fuzz.py.
"""
from __future__ import annotations

import struct

import fuzz
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

#: generated inputs per parser in CI (issue 7: at least 2,000)
EXAMPLES = 2000

fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid input with a few bytes flipped, cut or appended."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        for _ in range(draw(st.integers(0, 3))):
            action = draw(st.sampled_from(("flip", "cut", "append")))
            if action == "flip" and data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            elif action == "cut" and data:
                del data[draw(st.integers(0, len(data) - 1)):]
            else:
                data += draw(st.binary(max_size=8))
        return bytes(data)

    return build()


header = st.binary(min_size=4, max_size=4)
short_apdu = st.builds(lambda h, body, le: h + bytes((len(body),)) + body + le,
                       header, st.binary(min_size=1, max_size=255), st.sampled_from((b"", b"\x00", b"\x10")))
extended_apdu = st.builds(lambda h, body, le: h + b"\x00" + struct.pack(">H", len(body)) + body + le,
                          header, st.binary(min_size=1, max_size=400), st.sampled_from((b"", b"\x00\x00", b"\x01\x00")))
simple_records = st.lists(st.tuples(st.integers(1, 0xFE), st.binary(max_size=40)), max_size=6).map(
    lambda items: b"".join(bytes((t, len(v))) + v for t, v in items))
ber_objects = st.recursive(
    st.builds(lambda tag, v: bytes((tag, len(v))) + v, st.sampled_from((0x5A, 0x50, 0x9F, 0x57, 0x82)), st.binary(max_size=20)),
    lambda inner: st.builds(lambda tag, kids: bytes((tag, len(b"".join(kids)) & 0xFF)) + b"".join(kids),
                            st.sampled_from((0x70, 0x6F, 0xA5, 0x61, 0xBF)), st.lists(inner, max_size=3)),
    max_leaves=8)
frames = st.lists(st.binary(min_size=1, max_size=300), max_size=4).map(
    lambda payloads: b"".join(struct.pack(">H", len(p)) + p for p in payloads))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)

def envelope_json(messages: list[dict]) -> st.SearchStrategy[bytes]:
    """A batch body of the given messages, a field or two replaced by any JSON value, then mutated."""
    import json

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        batch = [dict(m) for m in messages]
        for _ in range(draw(st.integers(0, 2))):
            message = draw(st.sampled_from(batch))
            message[draw(st.sampled_from(sorted(message)))] = draw(json_values)
        return json.dumps({"messages": batch}, ensure_ascii=False).encode()

    return mutated(build())


def reply_json() -> st.SearchStrategy[bytes]:
    """A batch reply naming the sent msgids (or others), infcodes of any JSON type, then mutated."""
    import json

    item = st.fixed_dictionaries({"msgid": st.sampled_from((fuzz.MESSAGE["msgid"], "H11010500001202603010930000002", "X")) | json_values,
                                  "infcode": st.sampled_from((0, -1)) | json_values}, optional={"err_msg": json_values})
    return mutated(st.builds(lambda items: json.dumps({"results": items}).encode(), st.lists(item, max_size=4)))


INPUTS = {
    "command": st.one_of(st.binary(max_size=300), mutated(short_apdu), mutated(extended_apdu)),
    "response": st.binary(max_size=300),
    "simple-tlv": st.one_of(st.binary(max_size=200), mutated(simple_records)),
    "ber-tlv": st.one_of(st.binary(max_size=200), mutated(ber_objects)),
    "profile": st.one_of(st.binary(max_size=200), st.builds(lambda v: __import__("json").dumps(v).encode(), json_values)),
    "profile-json": st.builds(lambda i, v: bytes((i,)) + __import__("json").dumps(v).encode(), st.integers(0, 255), json_values),
    "vpcd-frames": st.one_of(st.binary(max_size=300), mutated(frames)),
    "card-records": st.one_of(st.binary(max_size=400),
                              st.lists(mutated(simple_records), max_size=16).map(lambda rs: b"\xfe".join(rs))),
    "central-request": st.one_of(st.binary(max_size=300),
                                 st.builds(lambda path, body: bytes((path,)) + body, st.integers(0, 2),
                                           envelope_json([fuzz.MESSAGE, {**fuzz.MESSAGE, "msgid": fuzz.MESSAGE["msgid"][:-1] + "2"}]))),
    "central-reply": st.one_of(st.binary(max_size=300), reply_json()),
}


def test_every_target_has_inputs():
    assert set(INPUTS) == set(fuzz.TARGETS)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_parser_raises_only_typed_errors(name):
    target = fuzz.TARGETS[name]

    @fuzz_settings
    @given(INPUTS[name])
    def check(data: bytes) -> None:
        fuzz.run(target, data)

    check()
