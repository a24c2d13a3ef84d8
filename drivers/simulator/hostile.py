"""A hostile card: a genuine virtual chip whose answers are spoiled, to test that the terminal holds.

A terminal meets worn, cheap and malicious cards. ``HostileCard`` wraps a virtual SSC and, from its
``after``-th command on, answers the way broken or hostile cards do (project convention, used by
tests/test_hostile.py and ``sscard simulate --card hostile:MODE``):

========================  ============================================================================
mode                      answer
========================  ============================================================================
``wrong-length``          the right status word, but the data cut short or padded with garbage
``endless-61``            ``61 10`` and 16 bytes, to every command and every GET RESPONSE, forever
``out-of-sequence``       a status word that does not belong to the command (9000 to a wrong PIN,
                          63C2 to a READ RECORD, 6100 to a SELECT, ...), data dropped
``stall``                 nothing for ``stall_s`` seconds (10 by default), then the genuine answer
``pause``                 as ``stall`` for one command only, then genuine answers (a loose contact):
                          what a flow does after a card it gave up on answers late
``random``                random bytes of random length, sometimes fewer than the 2 of a status word
========================  ============================================================================

The terminal must bound every loop (GET RESPONSE rounds, retries) and every wait (the card
watchdog), say what happened in a clerk's words and record nothing.
"""
from __future__ import annotations

import random
import time

from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator.base import SimulatedCard, WrappedCard

MODES = ("wrong-length", "endless-61", "out-of-sequence", "stall", "pause", "random")

#: status words a confused card sends at the wrong moment
STRAY_SWS = (0x9000, 0x63C2, 0x6100, 0x6283, 0x6983, 0x6A82, 0x6D00, 0x6F00, 0x6C05, 0x6B00)


class HostileCard(WrappedCard):
    """``inner`` with its answers spoiled per ``mode`` from command number ``after`` (0 = the first)."""

    def __init__(self, inner: SimulatedCard, mode: str, after: int = 0, stall_s: float = 10.0, seed: int = 0) -> None:
        if mode not in MODES:
            raise ProfileError(f"unknown hostile mode {mode!r}; modes: {', '.join(MODES)}")
        super().__init__(inner)
        self.mode = mode
        self.after = after
        self.stall_s = stall_s
        self.commands = 0
        self.rng = random.Random(seed)

    def execute(self, apdu: bytes) -> bytes:
        self.commands += 1
        if self.commands <= self.after:
            return self.inner.execute(apdu)
        if self.mode == "endless-61":
            return bytes(self.rng.randrange(256) for _ in range(16)) + b"\x61\x10"
        if self.mode == "random":
            return bytes(self.rng.randrange(256) for _ in range(self.rng.choice((0, 1, 2, 5, 40, 300))))
        if self.mode == "stall" or (self.mode == "pause" and self.commands == self.after + 1):
            time.sleep(self.stall_s)
            return self.inner.execute(apdu)
        if self.mode == "pause":
            return self.inner.execute(apdu)
        genuine = self.inner.execute(apdu)
        data, sw = genuine[:-2], genuine[-2:]
        if self.mode == "wrong-length":
            if data and self.rng.random() < 0.5:
                return data[: self.rng.randrange(len(data))] + sw
            return data + bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 20))) + sw
        stray = self.rng.choice([s for s in STRAY_SWS if s.to_bytes(2, "big") != sw])
        return stray.to_bytes(2, "big")


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``hostile:MODE[:PROFILE[:AFTER]]`` -> (mode, profile, after); the profile defaults to ``adult``."""
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != "hostile" or parts[1] not in MODES or len(parts) > 4:
        raise ProfileError(f"a hostile card is hostile:MODE[:PROFILE[:AFTER]] with MODE one of {', '.join(MODES)}")
    profile = parts[2] if len(parts) > 2 and parts[2] else "adult"
    after = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    return parts[1], profile, after
