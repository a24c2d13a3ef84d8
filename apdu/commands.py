"""Builders for every command the terminal sends to the SSC, the bank application and the PSAM, and
beside a command the status words that mean something of their own to it (a :class:`Table`, looked
at before the general one: apdu/status.py).

ISO/IEC 7816-4 s7 (SELECT, READ RECORD, READ BINARY, VERIFY, GET CHALLENGE, GET RESPONSE, INTERNAL and
EXTERNAL AUTHENTICATE); PBOC/JR/T 0025 for CHANGE/RELOAD PIN and GET PROCESSING OPTIONS; PBOC PSAM for
DES INIT and DES CRYPT. Byte values as in docs/reference/commands.md; conventions in
docs/card-profile.md.
"""
from __future__ import annotations

from sscard.apdu import errors as e
from sscard.apdu.command import Command
from sscard.apdu.errors import APDUFormatError
from sscard.apdu.status import SW, Table

#: DF name of the social security application: "sx1.sh." + "社会保障" (GBK)
SSC_DF_NAME = b"sx1.sh." + "社会保障".encode("gbk")
#: PBOC payment system environment and the UnionPay debit/credit AIDs
PSE_NAME = b"1PAY.SYS.DDF01"
AID_PBOC_DEBIT = bytes.fromhex("A000000333010101")
AID_PBOC_CREDIT = bytes.fromhex("A000000333010102")

#: READ RECORD P2 low bits: "record number in P1" (ISO 7816-4 s7.3.3, table 49)
P2_RECORD_IN_P1 = 0x04


def select_df_name(name: bytes, first_or_only: bool = True) -> Command:
    """SELECT by DF name, ``00 A4 04 00 Lc name`` (ISO 7816-4 s7.1.1, P1=04). Le 00 asks for the FCI."""
    return Command(0x00, 0xA4, 0x04, 0x00 if first_or_only else 0x02, name, le=256)


def select_ssc(fci: bool = True) -> Command:
    """SELECT the social security application (no Le: case 3): as public readers send it (P2 00, the
    FCI returned), or with P2 0C, "no response data" (ISO 7816-4 s7.1.1 table 40), which spares a T=0
    card's GET RESPONSE when the FCI is not wanted."""
    return Command(0x00, 0xA4, 0x04, 0x00 if fci else 0x0C, SSC_DF_NAME)


def select_fid(fid: int) -> Command:
    """SELECT an EF by file identifier, ``00 A4 00 00 02 FID`` (ISO 7816-4 s7.1.1, P1=00)."""
    if not 0 <= fid <= 0xFFFF:
        raise APDUFormatError(f"A file identifier is two bytes (0000-FFFF), not {fid}")
    return Command(0x00, 0xA4, 0x00, 0x00, fid.to_bytes(2, "big"))


def select_mf() -> Command:
    """SELECT the MF, ``00 A4 00 00 02 3F 00``."""
    return select_fid(0x3F00)


#: SELECT and READ RECORD: a PIN's status word (63Cx, 6983) answers a PIN command only (ISO 7816-4
#: s7.5.6); to a SELECT or a read it means a confused or hostile card, not a wrong PIN
_PIN_ANSWER_TO_A_READ = (e.CardStatusError, "The card gave a PIN answer to a read: it is not working properly")
READ_SW = Table({SW.COUNTER: _PIN_ANSWER_TO_A_READ, SW.AUTH_BLOCKED: _PIN_ANSWER_TO_A_READ},
                counter=_PIN_ANSWER_TO_A_READ)


def read_record(record: int, sfi: int | None = None, le: int = 256, secret: bool = False) -> Command:
    """READ RECORD ``00 B2 record P2 Le``: P2 = 04 in the current EF, or SFI<<3|04 (ISO 7816-4 s7.3.3).

    ``secret`` keeps the record's content out of APDU traces (the ID number, the card number).
    """
    p2 = P2_RECORD_IN_P1 if sfi is None else (sfi << 3) | P2_RECORD_IN_P1
    return Command(0x00, 0xB2, record, p2, le=le, secret=secret)


def read_binary(offset: int = 0, le: int = 256) -> Command:
    """READ BINARY ``00 B0 offset Le`` in the current EF, offset below 0x8000 (ISO 7816-4 s7.2.3)."""
    if not 0 <= offset <= 0x7FFF:
        raise APDUFormatError(f"A READ BINARY offset is 15 bits (0-32767), not {offset}")
    return Command(0x00, 0xB0, offset >> 8 & 0x7F, offset & 0xFF, le=le)


def update_record(record: int, data: bytes) -> Command:
    """UPDATE RECORD ``00 DC record 04 Lc data`` in the current EF (ISO 7816-4 s7.3.5)."""
    return Command(0x00, 0xDC, record, P2_RECORD_IN_P1, data)


def verify(pin_bcd: bytes) -> Command:
    """VERIFY ``00 20 00 00 Lc PIN`` with the PIN in BCD (PBOC); the data is secret in traces."""
    return Command(0x00, 0x20, 0x00, 0x00, pin_bcd, secret=True)


def verify_status() -> Command:
    """VERIFY with no data ``00 20 00 00``: asks for the tries left without presenting a PIN (ISO 7816-4 s7.5.6)."""
    return Command(0x00, 0x20, 0x00, 0x00)


#: VERIFY (and CHANGE PIN, which verifies the current PIN on the way): ``63 Cx`` x tries left,
#: ``63 C0`` and ``69 83`` blocked (PBOC)
_PIN_BLOCKED = (e.PINBlockedError, "The PIN is blocked: the holder must have it reset at a bank counter")
VERIFY_SW = Table({SW.COUNTER: _PIN_BLOCKED, SW.AUTH_BLOCKED: _PIN_BLOCKED},
                  counter=(e.WrongPINError, "Wrong PIN: {tries} left before the PIN is blocked"))
#: VERIFY done by a PIN pad (apdu/part10.py): the card's answer, or the reader's own
VERIFY_ON_PAD_SW = Table({
    **VERIFY_SW.words,
    SW.PINPAD_CANCELLED: (e.PINEntryError, "The holder cancelled the PIN entry on the reader's keypad"),
    SW.PINPAD_TIMEOUT: (e.PINEntryError, "No PIN was typed on the reader's keypad in time"),
}, counter=VERIFY_SW.counter)


def change_pin(old_bcd: bytes, new_bcd: bytes) -> Command:
    """CHANGE PIN ``80 5E 01 00 Lc old FF new`` (PBOC)."""
    return Command(0x80, 0x5E, 0x01, 0x00, old_bcd + b"\xff" + new_bcd, secret=True)


#: CHANGE PIN verifies the current PIN on the way: VERIFY's words
CHANGE_PIN_SW = VERIFY_SW


#: length of the MAC that ends a MAC-protected command (PBOC)
MAC_LENGTH = 4


#: CLA INS P1 P2 of the MAC-protected commands
RELOAD_PIN_HEADER = (0x80, 0x5E, 0x00, 0x00)
APPLICATION_UNBLOCK_HEADER = (0x84, 0x18, 0x00, 0x00)
#: RELOAD PIN and APPLICATION UNBLOCK: ``69 88``, the MAC refused, means the terminal's keys are
#: not the card's
MAC_PROTECTED_SW = Table({SW.MAC_WRONG: (
    e.TerminalAuthenticationError, "The card refused the MAC: this terminal's keys are not the ones for this card")})
RELOAD_PIN_SW = APPLICATION_UNBLOCK_SW = MAC_PROTECTED_SW


def mac_input(cla: int, ins: int, p1: int, p2: int, body: bytes) -> bytes:
    """The bytes a MAC-protected command's MAC covers: ``CLA INS P1 P2 Lc body``, Lc counting the
    4-byte MAC that follows ``body`` (PBOC; docs/card-profile.md, "MAC-protected commands")."""
    return bytes((cla, ins, p1, p2, len(body) + MAC_LENGTH)) + bytes(body)


def reload_pin_mac_input(new_bcd: bytes) -> bytes:
    """What the RELOAD PIN MAC covers: ``80 5E 00 00 Lc new-PIN`` (holds the PIN: never trace it)."""
    return mac_input(*RELOAD_PIN_HEADER, new_bcd)


def reload_pin(new_bcd: bytes, mac: bytes) -> Command:
    """RELOAD PIN ``80 5E 00 00 Lc new MAC(4)`` (PBOC form; for SSC a project convention).

    The MAC covers :func:`reload_pin_mac_input`; the data is secret in traces.
    """
    return Command(*RELOAD_PIN_HEADER, bytes(new_bcd) + bytes(mac), secret=True)


def application_unblock_mac_input() -> bytes:
    """What the APPLICATION UNBLOCK MAC covers: ``84 18 00 00 04``."""
    return mac_input(*APPLICATION_UNBLOCK_HEADER, b"")


def application_unblock(mac: bytes) -> Command:
    """APPLICATION UNBLOCK ``84 18 00 00 04 MAC`` (PBOC / EMV 4.3 Book 3 s6.5.1): activates the SSC
    application (convention, docs/card-profile.md). The MAC covers :func:`application_unblock_mac_input`."""
    return Command(*APPLICATION_UNBLOCK_HEADER, bytes(mac))


def get_challenge(length: int = 8) -> Command:
    """GET CHALLENGE ``00 84 00 00 Le``: 8 bytes for 3DES, 16 for SM4 (ISO 7816-4 s7.5.3)."""
    return Command(0x00, 0x84, 0x00, 0x00, le=length)


def get_response(le: int = 256) -> Command:
    """GET RESPONSE ``00 C0 00 00 Le`` (ISO 7816-4 s7.6.1)."""
    return Command(0x00, 0xC0, 0x00, 0x00, le=le)


def internal_authenticate(key_id: int, challenge: bytes) -> Command:
    """INTERNAL AUTHENTICATE ``00 88 00 key Lc random Le`` (ISO 7816-4 s7.5.2); the card encrypts the random."""
    return Command(0x00, 0x88, 0x00, key_id, challenge, le=len(challenge))


def external_authenticate(key_id: int, cryptogram: bytes) -> Command:
    """EXTERNAL AUTHENTICATE ``00 82 00 key Lc cryptogram`` (ISO 7816-4 s7.5.4)."""
    return Command(0x00, 0x82, 0x00, key_id, cryptogram)


#: EXTERNAL AUTHENTICATE: ``63 Cx`` x tries left for the terminal's key, ``63 C0`` and ``69 83`` the
#: card's own counter has blocked it (not the PIN's)
_KEY_BLOCKED = (e.AuthenticationMethodBlockedError,
                "The card has blocked this terminal's authentication key after too many failures")
EXTERNAL_AUTHENTICATE_SW = Table(
    {SW.COUNTER: _KEY_BLOCKED, SW.AUTH_BLOCKED: _KEY_BLOCKED},
    counter=(e.TerminalAuthenticationError, "The card refused this terminal's authentication ({tries} left before "
                                            "the card blocks it): check the key store or PSAM"))


def get_processing_options(pdol_data: bytes = b"", secret: bool = False) -> Command:
    """GET PROCESSING OPTIONS ``80 A8 00 00 Lc 83 len PDOL-data 00`` (EMV 4.3 Book 3 s6.5.8); ``secret``:
    its answer may carry the account number (a format-2 template with 57 or 5A), kept out of traces."""
    return Command(0x80, 0xA8, 0x00, 0x00, bytes((0x83, len(pdol_data))) + pdol_data, le=256, secret=secret)


#: PSAM DES CRYPT modes (P1): ECB-encrypt, or the 4-byte MAC (convention, docs/card-profile.md)
PSAM_MODE_ENCRYPT = 0x00
PSAM_MODE_MAC = 0x05


def psam_des_init(key_usage: int, key_version: int, diversification: bytes, challenge: bytes = b"") -> Command:
    """PSAM DES INIT ``80 1A usage version Lc D [challenge]`` (PBOC PSAM; convention for SSC PSAMs):
    diversify the master key of that usage and version with D; a MAC key also takes the card's challenge."""
    return Command(0x80, 0x1A, key_usage, key_version, bytes(diversification) + bytes(challenge))


def psam_des_crypt(mode: int, data: bytes, secret: bool = False) -> Command:
    """PSAM DES CRYPT ``80 FA mode 00 Lc data Le`` (PBOC PSAM): encrypt (mode 00) or MAC (05) with the
    key set up by DES INIT. ``secret`` when the data holds a PIN (the RELOAD PIN MAC input)."""
    return Command(0x80, 0xFA, mode, 0x00, bytes(data), le=256, secret=secret)
