"""Another program on the counter PC that shares the reader with sscard (the hospital's software):
pyscard's raw PC/SC calls, no code of ours but the card's application name.

``python sharing_client.py READER STOP ID_NUMBER``: connects once in shared mode and, until the file
STOP exists (two minutes at most), reads the holder's ID number in a loop (50 reads a second), each read a PC/SC transaction (SELECT the
application, READ RECORD 1 of EF06 by SFI), as a well-behaved program does. Prints one JSON object:
``{"reads", "correct", "wrong", "resets", "errors"}`` (correct: the record holds ID_NUMBER); ``resets`` counts the times its session was
reset under it (SCARD_W_RESET_CARD: another program reset or powered the card down), after which it
reconnects and goes on.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from smartcard import scard

SSC_DF_NAME = b"sx1.sh." + "\u793e\u4f1a\u4fdd\u969c".encode("gbk")  # 社会保障
SELECT = [0x00, 0xA4, 0x04, 0x0C, len(SSC_DF_NAME), *SSC_DF_NAME]  # P2 0C: no response data
READ_ID = [0x00, 0xB2, 0x01, (6 << 3) | 4, 0x00]  # record 1 of EF06 (SFI 6)
PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
#: between two reads: pcsc-lite's SCardBeginTransaction polls a held card every 100 ms
#: (PCSCLITE_LOCK_POLL_RATE), so a client that takes the card again the moment it lets go starves
#: every other program (ours waited 4 s a read); a real program does something between two reads
PAUSE_S = 0.02


def code(hresult: int) -> int:
    return hresult & 0xFFFFFFFF


def transmit(card: int, protocol: int, apdu: list[int]) -> tuple[int, list[int]]:
    hresult, response = scard.SCardTransmit(card, protocol, apdu)
    if code(hresult) == 0 and len(response) == 2 and response[0] == 0x6C:  # T=0: the right Le
        hresult, response = scard.SCardTransmit(card, protocol, apdu[:-1] + [response[1]])
    return hresult, response


def main() -> None:
    reader, stop, expected = sys.argv[1], Path(sys.argv[2]), sys.argv[3].encode()
    _, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hresult, card, protocol = scard.SCardConnect(context, reader, scard.SCARD_SHARE_SHARED, PROTOCOLS)
    if code(hresult):
        print(json.dumps({"connect": scard.SCardGetErrorMessage(hresult)}))
        return
    counts = {"reads": 0, "correct": 0, "wrong": 0, "resets": 0, "errors": []}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stop.exists():
        hresult = scard.SCardBeginTransaction(card)
        if code(hresult) == code(scard.SCARD_W_RESET_CARD):
            counts["resets"] += 1
            hresult, protocol = scard.SCardReconnect(card, scard.SCARD_SHARE_SHARED, PROTOCOLS, scard.SCARD_LEAVE_CARD)
            continue
        if code(hresult):
            counts["errors"].append(f"begin: {scard.SCardGetErrorMessage(hresult)}")
            time.sleep(0.01)
            continue
        try:
            counts["reads"] += 1
            hresult, selected = transmit(card, protocol, SELECT)
            hresult2, record = transmit(card, protocol, READ_ID)
            if code(hresult) == code(scard.SCARD_W_RESET_CARD) or code(hresult2) == code(scard.SCARD_W_RESET_CARD):
                counts["resets"] += 1
            elif code(hresult) or code(hresult2):
                counts["errors"].append(scard.SCardGetErrorMessage(hresult or hresult2))
            elif selected[-2:] in ([0x90, 0x00], [0x62, 0x83]) and bytes(record[:-2]) == b"\x08\x12" + expected \
                    and record[-2:] == [0x90, 0x00]:
                counts["correct"] += 1
            else:
                counts["wrong"] += 1
        finally:
            scard.SCardEndTransaction(card, scard.SCARD_LEAVE_CARD)
        time.sleep(PAUSE_S)
    scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
    scard.SCardReleaseContext(context)
    counts["errors"] = sorted(set(counts["errors"]))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
