"""A social security card session over any Connection (real reader, pcscd's virtual reader, memory).

**The identity read** (docs/card-profile.md, "Reading the card"): SELECT the SSC application by DF
name with P2 0C (no FCI: on T=0 no GET RESPONSE follows), then READ RECORD ``00 B2 n (SFI<<3)|04 00``
for each item of apdu.catalogue, EF05 by SFI 5 and EF06 by SFI 6: 15 commands. A card that answers
a short form's first try with anything but success (``6A 86`` wrong P1-P2, ``6A 81``, ``6A 83``...)
is read the way public HIS readers do instead, for the rest of the session, and it is their answer
that counts (an error is reported from it): SELECT with P2 00, SELECT EF05
and EF06 by FID, READ RECORD ``00 B2 n 04 00`` in each (17 commands, 18 on T=0). A not-yet-activated
card answers the SELECT with 6283 ("Application lifecycle").

**Sharing the reader.** Every method that sends commands is one operation (:func:`operation`): a PC/SC
transaction, so another program's commands never come between a SELECT and its READ; when another
program reset the card since our last command, the session is renewed and the operation runs again
from its SELECT, once (the reset answer means our command was not sent). A VERIFY or an
authentication that passes marks the session (``Connection.security_raised``), so that letting the
card go resets it for the next program.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from sscard.apdu import commands, part10
from sscard.apdu.atr import historical_bytes
from sscard.apdu.catalogue import (
    CARD_ITEMS,
    ETHNICITY,
    HOLDER_ITEMS,
    SEX,
    THIRD_GENERATION,
    DataItem,
    card_generation,
    issuing_region,
)
from sscard.apdu.crypto import wipe
from sscard.apdu.errors import (
    APDUFormatError,
    AuthenticationMethodBlockedError,
    CardDataError,
    PINBlockedError,
    PINEntryError,
    TerminalAuthenticationError,
    TLVError,
    WrongPINError,
    mask,
)
from sscard.apdu.pin import PINFormatError, check_new_pin, pin_to_bcd
from sscard.apdu.response import Response
from sscard.apdu.status import SW, Table, counter
from sscard.apdu.tlv import decode_simple
from sscard.drivers.connection import Connection
from sscard.drivers.errors import CardResetError, ReaderError, TransportError
from sscard.terminal.errors import ExternalAuthenticationRequiredError, NotSocialSecurityCardError

if TYPE_CHECKING:
    from sscard.terminal.bankaccount import BankAccount

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Everything EF05 (card) and EF06 (holder) say, decoded. Dates are :class:`datetime.date`."""

    # EF05: the card
    card_identification_code: str
    card_type: str
    spec_version: str
    initialising_institution: str
    issue_date: dt.date | None
    expiry_date: dt.date | None
    card_number: str
    # EF06: the holder
    social_security_number: str
    name: str
    name_extension: str
    sex: str
    ethnicity: str
    birthplace: str
    birth_date: dt.date | None
    # from the session
    activated: bool
    card_reset_info: str

    @property
    def issuing_region(self) -> str:
        """Administrative region code of the issuer: the first 6 digits of the card identification code."""
        return issuing_region(self.card_identification_code)

    @property
    def full_name(self) -> str:
        """The name with its extension (long minority names continue in tag 4E)."""
        return self.name + self.name_extension

    @property
    def sex_name(self) -> str:
        return SEX.get(self.sex, "未知")

    @property
    def ethnicity_name(self) -> str:
        return ETHNICITY.get(int(self.ethnicity), "未知") if self.ethnicity.isdigit() else "未知"

    def to_dict(self, redact: bool = False) -> dict[str, object]:
        """JSON-ready fields (dates as ISO strings) with the derived names; masked with ``redact``."""
        out: dict[str, object] = asdict(self)
        out.update(
            full_name=self.full_name,
            issuing_region=self.issuing_region,
            sex_name=self.sex_name,
            ethnicity_name=self.ethnicity_name,
        )
        if redact:
            out.update(redacted(self))
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in out.items()}


def holder(identity: Identity, *, full_id: bool = False) -> dict[str, object]:
    """The holder object of every ``--json`` result and API answer (docs/json.md): the name, the ID
    number masked as the counter screens show it (whole with ``full_id``, where the command is meant
    to show it), the card number and the issuing region."""
    number = identity.social_security_number
    return {"name": identity.full_name, "id_number": number if full_id else mask(number, 6, 4),
            "card_number": identity.card_number, "issuing_region": identity.issuing_region}


def redacted(identity: Identity) -> dict[str, object]:
    """The fields ``--redact`` replaces: identifiers masked, the name after its first character.

    Nothing of the ID number shows beyond what its masked form does (the 6-digit address code,
    GB 11643): the birth date is its digits 7-14 and the birthplace an address code too, so both
    are masked whole; the year alone would narrow the number to a few thousand candidates.
    """
    return {
        "social_security_number": mask(identity.social_security_number, 6, 0),
        "card_number": mask(identity.card_number, 1, 2),
        "card_identification_code": mask(identity.card_identification_code, 6, 4),
        "name": identity.name[:1] + "*" * (len(identity.name) - 1),
        "name_extension": "*" * len(identity.name_extension),
        "full_name": identity.full_name[:1] + "*" * (len(identity.full_name) - 1),
        "birth_date": "****-**-**" if identity.birth_date else None,
        "birthplace": "*" * len(identity.birthplace),
    }


P = ParamSpec("P")
T = TypeVar("T")
#: what authenticates the terminal to a card (terminal.cardsecurity.unlocker: EXTERNAL AUTHENTICATE), given
#: the card and what picks its keys, read from its EF05: the identification code and spec version
Unlock = Callable[["SocialSecurityCard", str, str], None]


def needs_terminal_authentication(spec_version: str) -> bool:
    """Whether a card of this spec version (EF05 tag 03, ``2.00``, ``3.00``) shows EF06 only after
    external authentication."""
    generation = card_generation(spec_version)
    return generation is not None and generation >= THIRD_GENERATION


def operation(method: Callable[Concatenate[SocialSecurityCard, P], T]) -> Callable[Concatenate[SocialSecurityCard, P], T]:
    """A method of :class:`SocialSecurityCard` that is one operation on the card (module docstring)."""
    @functools.wraps(method)
    def run(card: SocialSecurityCard, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return card.atomically(lambda: method(card, *args, **kwargs))

    return run


class SocialSecurityCard:
    """The SSC application on one card, reached through ``connection``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.activated: bool | None = None
        #: whether the card took the short forms of the read (SELECT P2 0C, READ RECORD by SFI): None
        #: until tried, then the answer (module docstring, "The identity read")
        self.short_select: bool | None = None
        self.by_sfi: bool | None = None

    def atomically(self, work: Callable[[], T]) -> T:
        """``work`` (several commands) as one operation: a PC/SC transaction; after a reset by another
        program, the connection renewed and ``work`` run again from the SELECT, once. Within an
        operation already, ``work`` is part of it."""
        if self.connection.in_transaction:
            return work()
        try:
            with self.connection.transaction():
                return work()
        except CardResetError:
            log.info("another program reset the card: reconnecting, selecting again")
            self.connection.reconnect()
            self.activated = None
        with self.connection.transaction():
            return work()

    @operation
    def select(self) -> bool:
        """SELECT the SSC application; return whether it is activated.

        Raises :class:`NotSocialSecurityCardError` when the card has no SSC application.
        """
        response = None
        if self.short_select is not False:
            response = self.connection.transmit(commands.select_ssc(fci=False))
            self.short_select = response.sw in (SW.OK, SW.NOT_ACTIVATED)
        if not self.short_select:
            response = self.connection.transmit(commands.select_ssc())
        assert response is not None
        if response.sw in (SW.OK, SW.NOT_ACTIVATED):  # 6283: issued, not yet activated
            self.activated = response.sw == SW.OK
            return self.activated
        log.info("SELECT of the SSC application answered %04X", response.sw)
        raise NotSocialSecurityCardError(
            f"This is not a social security card: it has no social security application (SW {response.sw:04X})"
        )

    @contextlib.contextmanager
    def _raising_security(self) -> Iterator[None]:
        """Around a command that may raise the card's security status (a PIN, the terminal's
        authentication): the session is marked before it is sent (an answer lost may hide a success;
        ``Connection.security_raised``), and unmarked again when the card said no."""
        before = self.connection.security_raised
        self.connection.security_raised = True
        try:
            yield
        except (WrongPINError, PINBlockedError, PINEntryError, TerminalAuthenticationError,
                AuthenticationMethodBlockedError):
            self.connection.security_raised = before
            raise

    def _ensure_selected(self) -> None:
        if self.activated is None:
            self.select()

    @operation
    def read_file(self, items: tuple[DataItem, ...]) -> dict[str, object]:
        """READ RECORD each item of one EF by its SFI, or, on a card that refuses that, SELECT the EF
        by FID and READ RECORD in it (module docstring, "The identity read"); decode per apdu.catalogue."""
        self._ensure_selected()
        values: dict[str, object] = {}
        selected = False
        for item in items:
            response = None
            if self.by_sfi is not False:
                response = self.connection.transmit(commands.read_record(item.record, sfi=item.sfi, secret=item.sensitive))
                if self.by_sfi is None:  # the first read on this card tells
                    self.by_sfi = response.sw == SW.OK
            if not self.by_sfi:
                if not selected:
                    check_read(self.connection.transmit(commands.select_fid(item.fid)))
                    selected = True
                response = self.connection.transmit(commands.read_record(item.record, secret=item.sensitive))
            assert response is not None
            check_read(response)
            try:
                record = decode_simple(response.data)
            except TLVError as err:
                raise CardDataError(
                    f"The card's data is damaged: record {item.record} of EF{item.fid & 0xFF:02X} is malformed ({err})"
                ) from None
            if item.tag not in record:
                raise CardDataError(
                    f"The card's data is damaged: record {item.record} of EF{item.fid & 0xFF:02X} "
                    f"does not hold the {item.name_en} (tag {item.tag:02X})"
                )
            raw = record[item.tag]
            values[item.key] = item.decode(raw) if raw else (None if item.encoding == "date" else "")
        return values

    @operation
    def read_identity(self, unlock: Unlock | None = None) -> Identity:
        """Read and decode EF05 and EF06 (15 commands: module docstring, "The identity read").

        A third-generation card (spec version 3.00 in EF05) shows EF06 only to a terminal that has
        authenticated itself: ``unlock(card, code, spec_version)`` does that between the two files (in the same
        operation); without it such a card is ExternalAuthenticationRequiredError (exit 8), before
        the holder's data is asked for."""
        values = self.read_file(CARD_ITEMS)
        if needs_terminal_authentication(str(values["spec_version"])):
            if unlock is None:
                raise ExternalAuthenticationRequiredError(
                    f"This third-generation card (spec {values['spec_version']}) shows the holder's data only to a "
                    "terminal that authenticates itself first, and no key store was given for it")
            unlock(self, str(values["card_identification_code"]), str(values["spec_version"]))
        values |= self.read_file(HOLDER_ITEMS)
        return Identity(
            **values,  # type: ignore[arg-type]
            activated=bool(self.activated),
            card_reset_info=historical_bytes(self.connection.atr).hex().upper(),
        )

    @operation
    def pin_tries_left(self) -> int | None:
        """Tries left before the PIN blocks (VERIFY with no data, ISO 7816-4 s7.5.6); None if already verified."""
        self._ensure_selected()
        response = self.connection.transmit(commands.verify_status())
        tries = counter(response.sw)
        if tries is not None:
            return tries
        check_no_data(response, "VERIFY", commands.VERIFY_SW)
        return None

    @operation
    def verify_pin(self, pin: str) -> None:
        """VERIFY the holder's PIN (BCD). Raises WrongPINError (tries left) or PINBlockedError."""
        self._ensure_selected()
        block = bytearray(pin_to_bcd(pin))
        try:
            with self._raising_security():
                check_no_data(self.connection.transmit(commands.verify(bytes(block))), "VERIFY", commands.VERIFY_SW)
        finally:
            wipe(block)

    def has_pin_pad(self) -> bool:
        """Whether the reader has a keypad the holder types the PIN on (PC/SC part 10 VERIFY PIN DIRECT)."""
        return part10.FEATURE_VERIFY_PIN_DIRECT in self.connection.features()

    @operation
    def verify_pin_on_pad(self) -> None:
        """VERIFY with the PIN the holder types on the reader's keypad (apdu/part10.py): the PIN never
        passes through the terminal, only the card's status word comes back. WrongPINError and
        PINBlockedError as :meth:`verify_pin`; PINEntryError (exit 6) when the holder cancelled or
        typed nothing in time (no try spent)."""
        self._ensure_selected()
        code = self.connection.features().get(part10.FEATURE_VERIFY_PIN_DIRECT)
        if code is None:
            raise ReaderError(f"The reader {self.connection.name} has no PIN pad")
        header = commands.verify(b"\x00")
        with self._raising_security():
            answer = self.connection.control(code, part10.verify_pin_structure(header.cla, header.ins, header.p1,
                                                                               header.p2))
            try:
                response = Response.from_bytes(answer)
            except APDUFormatError:
                raise TransportError(f"The PIN pad answered {len(answer)} bytes, not a status word") from None
            check_no_data(response, "VERIFY", commands.VERIFY_ON_PAD_SW)

    @operation
    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """CHANGE PIN ``80 5E 01 00 old FF new`` (PBOC; docs/card-profile.md "PIN").

        The new PIN is checked first (PINFormatError, WeakPINError: nothing sent); a wrong old PIN
        costs a try (WrongPINError, PINBlockedError) as VERIFY does.
        """
        check_new_pin(new_pin)
        if new_pin == old_pin:
            raise PINFormatError("The new PIN must differ from the current one")
        self._ensure_selected()
        old, new = bytearray(pin_to_bcd(old_pin)), bytearray(pin_to_bcd(new_pin))
        try:
            with self._raising_security():  # the current PIN is verified on the way
                self.connection.transmit(commands.change_pin(bytes(old), bytes(new))).check(commands.CHANGE_PIN_SW)
        finally:
            wipe(old)
            wipe(new)
        log.info("PIN changed")

    @operation
    def reload_pin(self, new_bcd: bytes, mac: bytes) -> None:
        """RELOAD PIN ``80 5E 00 00 new MAC`` (bank counter; the MAC comes from terminal.cardsecurity).
        TerminalAuthenticationError when the card refuses the MAC (``69 88``: the keys are not the card's)."""
        self._ensure_selected()
        self.connection.transmit(commands.reload_pin(new_bcd, mac)).check(commands.RELOAD_PIN_SW)

    @operation
    def application_unblock(self, mac: bytes) -> None:
        """APPLICATION UNBLOCK ``84 18 00 00 04 MAC``: the application becomes active (convention).
        TerminalAuthenticationError when the card refuses the MAC, as :meth:`reload_pin`."""
        self._ensure_selected()
        self.connection.transmit(commands.application_unblock(mac)).check(commands.APPLICATION_UNBLOCK_SW)
        self.activated = True

    @operation
    def read_bank_account(self) -> BankAccount:
        """The card's bank account (terminal/bankaccount.py, needs no PIN); the social security
        application is selected again by the next operation."""
        from sscard.terminal.bankaccount import read_bank_account  # here: only --bank reads it

        self.activated = None  # the bank application is the selected one from here on
        return read_bank_account(self.connection)

    # --- authentication (docs/card-profile.md, "Keys and security") ---------------------------------

    @operation
    def card_key_data(self) -> tuple[str, str]:
        """The card identification code (hex) and the spec version: what picks the card's keys.
        Reads EF05 records 1 and 3 only."""
        items = tuple(item for item in CARD_ITEMS if item.key in ("card_identification_code", "spec_version"))
        values = self.read_file(items)
        return str(values["card_identification_code"]), str(values["spec_version"])

    @operation
    def get_challenge(self, length: int) -> bytes:
        """GET CHALLENGE (ISO 7816-4 s7.5.3): ``length`` random bytes the card keeps for the next
        EXTERNAL AUTHENTICATE or MAC-protected command."""
        self._ensure_selected()
        challenge = self.connection.transmit(commands.get_challenge(length)).check().data
        if len(challenge) != length:
            raise CardDataError(f"The card answered GET CHALLENGE with {len(challenge)} bytes, not {length}")
        return challenge

    @operation
    def internal_authenticate(self, key_id: int, random: bytes) -> bytes:
        """INTERNAL AUTHENTICATE ``00 88 00 key random`` (ISO 7816-4 s7.5.2): the card's cryptogram."""
        self._ensure_selected()
        return self.connection.transmit(commands.internal_authenticate(key_id, random)).check().data

    @operation
    def external_authenticate(self, key_id: int, cryptogram: bytes) -> None:
        """EXTERNAL AUTHENTICATE ``00 82 00 key cryptogram`` (ISO 7816-4 s7.5.4) after GET CHALLENGE:
        TerminalAuthenticationError (x tries left for the key) or AuthenticationMethodBlockedError
        (the card's own counter, not the PIN's), as ``commands.EXTERNAL_AUTHENTICATE_SW`` says."""
        self._ensure_selected()
        with self._raising_security():
            self.connection.transmit(commands.external_authenticate(key_id, cryptogram)).check(
                commands.EXTERNAL_AUTHENTICATE_SW)


def check_no_data(response: Response, command: str, table: Table) -> Response:
    """``response.check(table)`` for a command whose answer is a status word alone (VERIFY, ISO 7816-4
    s7.5.6): data bytes beside a success mean a confused or hostile card (CardDataError, exit 5).
    The bytes are counted, never shown: they answer a PIN command."""
    response.check(table)
    if response.data:
        raise CardDataError(
            f"The card answered {command} with {len(response.data)} data bytes where there are none: "
            f"it is not working properly"
        )
    return response


def check_read(response: Response) -> Response:
    """``response.check()`` for SELECT and READ RECORD, with their table (``commands.READ_SW``: a PIN's
    status word is a confused card's answer to a read)."""
    return response.check(commands.READ_SW)

