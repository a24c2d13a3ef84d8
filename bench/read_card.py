"""Bench: reading the identity, ours vs raw pyscard vs opensc-tool, and what the read costs a card.

    .venv/bin/python bench/read_card.py [-n 50] [--card adult]

1. The read's cost, counted in memory (no reader needed): commands and bytes (both ways) of
   ``SocialSecurityCard.read_identity`` on a T=0 card (adult), a strict T=0 chip (``strict:adult``,
   which answers 6Cxx to Le 00), a third-generation T=1 card (other-region, its authentication
   included) and a card that takes none of the short forms (the public readers' long read); and the
   modelled time on a 9600-baud card: bytes x 1.04 ms (10 bits a byte at 9600 bit/s) plus 4 ms a
   command (the card's processing and the turn-around: an allowance, not a measurement).
2. Through pcscd + vpcd: starts pcscd (if none answers) and the card in "Virtual PCD 00 00" in its own
   process (``sscard simulate``), then times the same APDU sequence (the 15-command identity read:
   SELECT P2 0C, READ RECORD by SFI) each way, in alternating blocks:
   - ours: drivers.pcsc.PCSCConnection.transmit (Command/Response, 61xx/6Cxx handling, tracing);
   - ours+decode: terminal.card.SocialSecurityCard.read_identity (the transaction, the decoding);
   - driver edge: PCSCConnection._exchange on bytes (the driver without Command/Response/transmit);
   - raw: smartcard.scard.SCardTransmit on lists of ints, no abstraction (the peer);
   - opensc-tool ``-c default`` (no card-driver probing): one process per read;
   and the in-memory driver's APDUs per second. Target: ours/raw <= 1.05.
Ends with one line per headline figure: ``figure NAME VALUE UNIT``.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/pcscd.py

import pcscd as stack  # noqa: E402  (tests/pcscd.py)
from smartcard import scard  # noqa: E402

from sscard.apdu import commands  # noqa: E402
from sscard.drivers import pcsc  # noqa: E402
from sscard.drivers.memory import MemoryConnection  # noqa: E402

READER = "Virtual PCD 00 00"
BLOCK = 10


#: the 9600-baud model (module docstring)
MS_PER_BYTE = 10 / 9600 * 1000
MS_PER_COMMAND = 4.0


def identity_apdus():
    """The 15-command identity read: SELECT P2 0C, READ RECORD 1-7 of EF05 (SFI 5) and EF06 (SFI 6)."""
    return [commands.select_ssc(fci=False)] + [commands.read_record(n, sfi=sfi) for sfi in (5, 6) for n in range(1, 8)]


def read_costs() -> list[tuple[str, int, int, float]]:
    """(card, commands, bytes both ways, modelled ms at 9600 baud) of one identity read, in memory."""
    from sscard.drivers.simulator import load_card
    from sscard.terminal.card import SocialSecurityCard
    from sscard.terminal.cardsecurity import unlocker
    from sscard.terminal.keystore import SoftwareKeyStore

    class Counting(MemoryConnection):
        bytes_moved = 0

        def _exchange(self, apdu: bytes) -> bytes:
            answer = super()._exchange(apdu)
            self.bytes_moved += len(apdu) + len(answer)
            return answer

    out = []
    for label, card in (("T=0 (adult)", load_card("adult")), ("T=0 strict (strict:adult)", load_card("strict:adult")),
                        ("T=1, 3.00 (other-region)", load_card("other-region")),
                        ("T=0, long form only", stack.LongFormOnly(load_card("adult")))):
        connection = Counting(card)
        SocialSecurityCard(connection).read_identity(unlocker(SoftwareKeyStore.bundled_test_keys()))
        moved = connection.bytes_moved
        out.append((label, connection.apdu_count, moved, moved * MS_PER_BYTE + connection.apdu_count * MS_PER_COMMAND))
    return out


def make_card(profile: str):
    """(card for a thread, profile name for a subprocess or None)."""
    try:
        from sscard.drivers.simulator import load_card
    except ImportError:
        return stack.MiniCard(), None
    return load_card(profile), profile


class MiniCardProcess(stack.ProcessCard):
    """The built-in MiniCard served by a VpcdClient in its own process (as sscard simulate would)."""

    def __init__(self) -> None:
        super().__init__("mini")
        self.args = [sys.executable, "-c", "import sys; sys.path[:0] = ['tests']; import pcscd;"
                     "from sscard.drivers.vpcd import VpcdClient; VpcdClient(pcscd.MiniCard()).run()"]


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

    costs = read_costs()
    print("the identity read on the card (counted in memory; 9600 baud: bytes x 1.04 ms + 4 ms a command)")
    print(f"  {'card':<28}{'commands':>9}{'bytes':>7}{'9600-baud ms':>14}")
    for label, count, moved, modelled in costs:
        print(f"  {label:<28}{count:>9}{moved:>7}{modelled:>14.0f}")

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
            from sscard.terminal.card import SocialSecurityCard
            if profile:
                fns.append(lambda: SocialSecurityCard(connection).read_identity())
        except ImportError:
            pass
        ours, raw, edge, *rest = medians_ms(fns, args.n)
        decode = rest[0] if rest else None
        close()
        connection.disconnect()

        index = str(pcsc.list_readers().index(READER))
        opensc_args = ["opensc-tool", "-c", "default", "-r", index] + [a for c in apdus for a in ("-s", c.to_bytes().hex(":"))]
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
    print(f"ratio ours/raw: {ours / raw:.3f} (target <= 1.05); driver edge/raw: {edge / raw:.3f}")
    print(f"in-memory driver: {memory_rate:,.0f} APDUs/s")
    by_card = {label: (count, moved, modelled) for label, count, moved, modelled in costs}
    print(f"figure read_apdus_t0 {by_card['T=0 (adult)'][0]} commands")
    print(f"figure read_bytes_t0 {by_card['T=0 (adult)'][1]} bytes")
    print(f"figure read_9600_ms_t0 {by_card['T=0 (adult)'][2]:.0f} ms")
    print(f"figure read_apdus_t0_strict {by_card['T=0 strict (strict:adult)'][0]} commands")
    print(f"figure read_9600_ms_t0_long_form {by_card['T=0, long form only'][2]:.0f} ms")
    print(f"figure read_apdus_t1_third_generation {by_card['T=1, 3.00 (other-region)'][0]} commands")
    print(f"figure read_ours_ms {ours:.2f} ms")
    print(f"figure read_raw_ms {raw:.2f} ms")
    print(f"figure read_ours_raw_ratio {ours / raw:.3f} x")
    print(f"figure read_opensc_tool_ms {opensc:.2f} ms")


if __name__ == "__main__":
    main()
