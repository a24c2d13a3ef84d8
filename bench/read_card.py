"""Bench: reading the identity through pcscd + vpcd, ours vs raw pyscard vs opensc-tool.

    /tmp/v/bin/python bench/read_card.py [-n 50] [--card adult]

Starts pcscd (if none answers) and a simulated card in "Virtual PCD 00 00" in its own process
(``sscard simulate`` when the SSC simulator is installed, else tests/pcscd.py's MiniCard), then times
the same APDU sequence (SELECT SSC, SELECT EF05 + 7 READ RECORD, SELECT EF06 + 7 READ RECORD):
- ours: drivers.pcsc.PCSCConnection.transmit (Command/Response, 61xx/6Cxx handling, tracing);
- ours+decode: terminal.card.SocialSecurityCard.read_identity (when terminal/card.py and a profile exist);
- driver edge: PCSCConnection._exchange on bytes (the driver without Command/Response/transmit);
- raw: smartcard.scard.SCardTransmit on lists of ints, no abstraction;
- opensc-tool: one ``opensc-tool -r N -s ... -s ...`` process per read;
and the in-memory driver's APDUs per second. Target: ours/raw <= 1.15.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from smartcard import scard  # noqa: E402

from apdu import commands  # noqa: E402
from drivers import pcsc  # noqa: E402
from drivers.memory import MemoryConnection  # noqa: E402
import pcscd as stack  # noqa: E402  (tests/pcscd.py)

READER = "Virtual PCD 00 00"
BLOCK = 10


def identity_apdus():
    out = [commands.select_ssc()]
    for fid in (0xEF05, 0xEF06):
        out.append(commands.select_fid(fid))
        out += [commands.read_record(n) for n in range(1, 8)]
    return out


def make_card(profile: str):
    """(card for a thread, profile name for a subprocess or None)."""
    try:
        from drivers.simulator import load_card
    except ImportError:
        return stack.MiniCard(), None
    return load_card(profile), profile


class MiniCardProcess(stack.ProcessCard):
    """The built-in MiniCard served by a VpcdClient in its own process (as sscard simulate would)."""

    def __init__(self) -> None:
        super().__init__("mini")
        self.args = [sys.executable, "-c", "import sys; sys.path[:0] = ['tests']; import pcscd;"
                     "from drivers.vpcd import VpcdClient; VpcdClient(pcscd.MiniCard()).run()"]


def median_ms(fn, n: int) -> float:
    return medians_ms([fn], n)[0]


def medians_ms(fns, n: int) -> list[float]:
    """Median ms per call of each function, run in alternating blocks of 10 calls (a*10, b*10, a*10,
    ...) so that load from other processes hits every function alike. Blocks rather than single
    calls: switching PC/SC handles on every call costs pcscd time that no real client pays."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for start in range(0, n, BLOCK):
        for fn, out in zip(fns, times):
            for _ in range(min(BLOCK, n - start)):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def raw_reader(apdus: list[bytes]):
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hresult, card, protocol = scard.SCardConnect(context, READER, scard.SCARD_SHARE_SHARED,
                                                 scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
    if hresult != scard.SCARD_S_SUCCESS:
        raise SystemExit(f"raw connect failed: {scard.SCardGetErrorMessage(hresult)}")
    lists = [list(a) for a in apdus]

    def read() -> None:
        for apdu in lists:
            hresult, response = scard.SCardTransmit(card, protocol, apdu)
            if response[-2] == 0x61:  # the same GET RESPONSE ours does
                hresult, response = scard.SCardTransmit(card, protocol, [0, 0xC0, 0, 0, response[-1]])

    def close() -> None:
        scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)

    return read, close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="reads per method (default 50)")
    parser.add_argument("--card", default="adult", help="profile for the simulated card (default adult)")
    args = parser.parse_args()

    daemon = stack.Pcscd().start()
    card, profile = make_card(args.card)
    slot = stack.ProcessCard(profile) if profile else MiniCardProcess()
    slot.start()
    try:
        apdus = identity_apdus()
        connection = pcsc.connect(READER, disposition="leave")
        before = connection.apdu_count
        for command in apdus:
            connection.transmit(command)
        per_read = connection.apdu_count - before
        read, close = raw_reader([c.to_bytes() for c in apdus])
        raw_apdus = [c.to_bytes() for c in apdus]

        def exchange_only() -> None:  # our driver edge alone: bytes in, bytes out, same GET RESPONSE
            for apdu in raw_apdus:
                response = connection._exchange(apdu)
                if response[-2] == 0x61:
                    connection._exchange(bytes((0, 0xC0, 0, 0, response[-1])))

        fns = [lambda: [connection.transmit(c) for c in apdus], read, exchange_only]
        try:
            from terminal.card import SocialSecurityCard
            if profile:
                fns.append(lambda: SocialSecurityCard(connection).read_identity())
        except ImportError:
            pass
        ours, raw, edge, *rest = medians_ms(fns, args.n)
        decode = rest[0] if rest else None
        close()
        connection.disconnect()

        index = str(pcsc.list_readers().index(READER))
        opensc_args = ["opensc-tool", "-r", index] + [a for c in apdus for a in ("-s", c.to_bytes().hex(":"))]
        opensc = median_ms(lambda: subprocess.run(opensc_args, capture_output=True, check=True, timeout=30),
                           max(5, args.n // 5))

        memory = MemoryConnection(make_card(args.card)[0])
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            for command in apdus:
                memory.transmit(command)
            count += len(apdus)
        memory_rate = memory.apdu_count / (time.perf_counter() - t0)
    finally:
        slot.stop()
        daemon.stop()

    print(f"card: {profile or 'built-in MiniCard (SSC simulator not installed)'}; {args.n} reads per method")
    print(f"APDUs per read (ours, incl. GET RESPONSE): {per_read}")
    print(f"ours (PCSCConnection.transmit)  median {ours:7.2f} ms/read")
    if decode is not None:
        print(f"ours + read_identity decode     median {decode:7.2f} ms/read")
    print(f"driver edge (PCSCConnection._exchange) median {edge:7.2f} ms/read")
    print(f"raw pyscard (scard.SCardTransmit) median {raw:7.2f} ms/read")
    print(f"opensc-tool (1 process per read) median {opensc:7.2f} ms/read")
    print(f"ratio ours/raw: {ours / raw:.3f} (target <= 1.15); driver edge/raw: {edge / raw:.3f}")
    print(f"in-memory driver: {memory_rate:,.0f} APDUs/s")


if __name__ == "__main__":
    main()
