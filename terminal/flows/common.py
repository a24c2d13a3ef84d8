"""What every counter flow shares: the site, the clerk's side, the card at the counter, the person.

A flow takes connections (a real reader, pcscd's virtual reader or the in-memory simulator), a
:class:`Site` (this terminal's journal and queue, its key store, its link to the platform) and a
:class:`Clerk` (what the terminal says and the PINs the holder types). It asks the platform online
(docs/platform.md, "Online first"), records what may wait, or refuses with nothing done.
Project convention (docs/flows.md).
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sscard.apdu.errors import SSCardError, WrongPINError, mask
from sscard.drivers.connection import Connection
from sscard.message.envelope import CST, INF_TIME, Fen, Station, parse_yuan
from sscard.message.infno import ACTIVATIONS, Infno
from sscard.terminal.card import Identity, SocialSecurityCard
from sscard.terminal.cardsecurity import check_genuine, unlocker
from sscard.terminal.config import TerminalConfig
from sscard.terminal.gateway import TEST_CREDENTIALS_WARNING, load_credentials
from sscard.terminal.keystore import CardKeyRef, KeyStore
from sscard.terminal.online import Person, Platform, PlatformRefusedError
from sscard.terminal.queue import STANDING, Outbox, QueuedRecord
from sscard.terminal.upload import CentralError

#: project codes of the records that activate a card at this terminal (docs/flows.md, "Activation")
#: tries left at which the PIN prompt stops mentioning them
FULL_TRIES = 3


class RefusedError(SSCardError):
    """The terminal refused the operation; nothing was recorded."""


class PaymentRefusedError(SSCardError):
    """The payment was refused; nothing was recorded."""


class Clerk(Protocol):
    """The counter's side of a flow: messages for the clerk and the holder, and the PINs typed."""

    def say(self, text: str) -> None:
        """Show one line of progress."""

    def ask_pin(self, prompt: str) -> str:
        """Ask for a PIN at a hidden prompt (or from the script); never logged."""

    def can_ask_again(self) -> bool:
        """Whether a wrong PIN may be asked again (a person at the screen; not a script's one line)."""

    def confirm(self, question: str) -> bool:
        """Ask the clerk a yes/no question (no unless the clerk says yes); the answer is said too."""


@dataclass
class ScriptedClerk:
    """A clerk for scripts and tests: PINs given in advance, messages collected in ``said``; a wrong
    PIN is asked again while PINs are left."""

    pins: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    #: the answer to every confirmation asked
    agrees: bool = False

    def say(self, text: str) -> None:
        self.said.append(text)

    def ask_pin(self, prompt: str) -> str:
        if not self.pins:
            raise RefusedError(f"No PIN given for: {prompt}")
        return self.pins.pop(0)

    def can_ask_again(self) -> bool:
        return bool(self.pins)

    def confirm(self, question: str) -> bool:
        self.say(f"{question} {'yes' if self.agrees else 'no'}")
        return self.agrees


@dataclass
class Site:
    """This terminal: its journal and record queue (one SQLite file, which holds the station), its key
    store, and its online session with the platform (None: a terminal with no platform configured)."""

    outbox: Outbox
    keys: KeyStore
    platform: Platform | None = None

    @property
    def station(self) -> Station:
        return self.outbox.require_station()

    def online(self) -> Platform:
        """The platform session; :class:`RefusedError` when this site has none."""
        if self.platform is None:
            raise RefusedError("This terminal has no platform to ask ([central] url): it cannot do this online.")
        return self.platform

    def now(self) -> dt.datetime:
        """The queue's clock (Beijing time), so records and their bodies agree in tests."""
        return self.outbox.clock().astimezone(CST)


@contextlib.contextmanager
def open_site(config: TerminalConfig, keys: KeyStore, central_url: str | None = None,
              say: Callable[[str], None] = lambda _text: None) -> Iterator[Site]:
    """The site ``config`` names, with the key store ``keys``: its journal opened with the station, and
    its platform session at ``central_url`` (else the configuration's ``[central] url``) with the
    configured gateway credentials (``say`` warns when they are the TEST ones). The journal's unknown
    entries are resolved first (:func:`resolve_unknown`), as every counter function does."""
    with Outbox(config.queue_path, config.station) as outbox, \
            open_platform(config, outbox, central_url, say) as platform:
        resolve_unknown(platform, say)
        yield Site(outbox, keys, platform)


def open_platform(config: TerminalConfig, outbox: Outbox, central_url: str | None = None,
                  say: Callable[[str], None] = lambda _text: None) -> Platform:
    """The platform session of ``config`` for ``outbox``, at ``central_url`` (else the configuration's),
    with its gateway credentials (``say`` warns when they are the TEST ones)."""
    credentials, test = load_credentials(config.central_credentials, config.institution_code)
    if test:
        say(TEST_CREDENTIALS_WARNING)
    return Platform(outbox, central_url or config.central_url, credentials)


def resolve_unknown(platform: Platform, say: Callable[[str], None]) -> None:
    """Resolve what the journal left unknown (a lost answer of an earlier run: docs/platform.md, "The
    journal"), telling ``say`` what was done; a platform that cannot be asked leaves them for later,
    with a warning."""
    if not platform.outbox.unknown_calls():
        return
    try:
        for resolution in platform.resolve():
            say(resolution.text)
    except (CentralError, PlatformRefusedError) as err:
        left = len(platform.outbox.unknown_calls())
        say(f"Warning: {left} journal entries of this terminal are still unknown ({err}); they are reversed as "
            "soon as the platform answers ('sscard queue resolve').")


@dataclass(frozen=True)
class CardAtCounter:
    """A social security card that passed the genuine-card check, with what it says."""

    card: SocialSecurityCard
    identity: Identity
    ref: CardKeyRef

    @property
    def card_sn(self) -> str:
        return self.identity.card_identification_code


def present_card(connection: Connection, site: Site) -> CardAtCounter:
    """SELECT the SSC application, prove the card genuine (internal authentication, docs/design.md item 2)
    and read its identity. A counterfeit is refused here, before anything is recorded (exit 8)."""
    card = SocialSecurityCard(connection)
    card.select()
    ref = check_genuine(card, site.keys)
    return CardAtCounter(card, card.read_identity(unlocker(site.keys)), ref)


def verify_holder_pin(at: CardAtCounter, clerk: Clerk) -> None:
    """Ask the holder's PIN and VERIFY it; a wrong PIN is said with the tries left and asked again while
    the clerk can ask (a person at the screen), what was typed before it kept. WrongPINError (exit 6,
    tries left) when it cannot be asked again, PINBlockedError (7) once blocked.

    On a reader with a PIN pad (PC/SC part 10) the holder types it on the keypad instead, where the
    terminal never sees it, and again after a wrong one while tries are left (the holder is at the
    keypad); PINEntryError (exit 6) when the holder cancels or types nothing in time."""
    tries = at.card.pin_tries_left()  # a blocked PIN is refused here, before the holder types anything
    on_pad = at.card.has_pin_pad()
    if on_pad:
        clerk.say("The holder types the PIN on the reader's keypad.")
    while True:
        prompt = "PIN" if tries is None or tries >= FULL_TRIES else f"PIN ({tries} {'try' if tries == 1 else 'tries'} left)"
        try:
            if on_pad:
                at.card.verify_pin_on_pad()
            else:
                at.card.verify_pin(clerk.ask_pin(prompt))
            return
        except WrongPINError as err:
            if err.tries_left <= 0 or not (on_pad or clerk.can_ask_again()):
                raise
            clerk.say(f"{err}. {'The holder types it again on the keypad.' if on_pad else 'Type it again.'}")
            tries = err.tries_left


def activation(record: QueuedRecord | None) -> dict[str, str] | None:
    """The ``activation`` of JSON results (docs/json.md): the record by which this command activated
    the card, or None when it did not (the card was active already)."""
    return {"msgid": record.msgid, "infno": record.infno} if record else None


def holder_line(identity: Identity) -> str:
    """How the terminal names the holder on screen: name, masked ID number, issuing region."""
    return (f"{identity.full_name}  {mask(identity.social_security_number, 6, 4)}  "
            f"issued in {identity.issuing_region}")


class IDNumberFormatError(SSCardError):
    """What was typed is not an ID number (GB 11643: 17 digits and a check digit or X)."""


#: GB 11643's weights of the first 17 digits, and the check characters by the sum modulo 11
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"


def check_id_number(text: str) -> str:
    """``text`` as an ID number (trimmed, ``x`` as ``X``), or :class:`IDNumberFormatError` saying why it
    is not one: 18 characters, ASCII digits, the last a check character that matches (GB 11643). The
    message shows the number masked, never whole."""
    value = (text or "").strip().upper()
    shown = mask(value, 6, 4) if len(value) > 10 else "*" * len(value)
    body, check = value[:17], value[17:]
    if len(value) != 18 or not (body.isascii() and body.isdigit()) or check not in ID_CHECK:
        raise IDNumberFormatError(f"{shown} is not an ID number: it has 18 characters, 17 digits and a check "
                                  "digit or X. Type it again.")
    if ID_CHECK[sum(int(d) * w for d, w in zip(body, ID_WEIGHTS)) % 11] != check:
        raise IDNumberFormatError(f"{shown} is not an ID number: its check digit does not match (a digit mistyped?). "
                                  "Type it again.")
    return value


def same_person(a: str, b: str) -> bool:
    """Two ID numbers name the same person (GB 11643: the check character X in either case)."""
    return a.strip().upper() == b.strip().upper()


def activation_record(outbox: Outbox, card_sn: str) -> QueuedRecord | None:
    """The first record that activated this card at this terminal (SS01 or SS02, queued or answered
    online; not one refused, reversed or dead), if any."""
    records = [r for r in outbox.for_card(card_sn) if r.infno in ACTIVATIONS and r.state in STANDING]
    return records[-1] if records else None


def is_active(identity: Identity, outbox: Outbox) -> bool:
    """Active on the chip, or activated at this terminal (by a first registration or a dual-card
    insert): the terminal treats the card as active from then on (docs/flows.md, "Activation")."""
    return identity.activated or activation_record(outbox, identity.card_identification_code) is not None


def person_fields(identity: Identity) -> dict[str, Any]:
    """The platform's credential fields for a social security card (docs/platform.md, 1101):
    mdtrt_cert_type 03, the card number and the card identification code (``card_sn``) as a pair, the
    ID number and the name."""
    return {
        "mdtrt_cert_type": "03",
        "mdtrt_cert_no": identity.card_number,
        "card_sn": identity.card_identification_code,
        "psn_cert_type": "01",
        "certno": identity.social_security_number,
        "psn_name": identity.full_name,
    }


def insurances_line(person: Person) -> str:
    """``310 in force, 510 suspended`` (or ``not insured``): what 1101 said of the person's insurances."""
    held = ", ".join(f"{i.insutype} {'in force' if i.in_force else 'suspended'}" for i in person.insurances)
    return held or "not insured"


def look_up(site: Site, at: CardAtCounter) -> Person:
    """1101 for the card at the counter: the platform's person (psn_no, insurances, insured region,
    balance). The platform must name the card's own holder (:class:`RefusedError` otherwise)."""
    identity = at.identity
    output = site.online().query(Infno.PERSON, {"data": {**person_fields(identity), "begntime": timestamp(site)}},
                                 insured_region=identity.issuing_region)
    person = Person.from_1101(output)
    if not same_person(person.certno, identity.social_security_number):
        raise RefusedError("The platform knows this card under another holder: do not accept it. Nothing was done.")
    return person


def timestamp(site: Site) -> str:
    """Now, as the platform writes times (``yyyy-MM-dd HH:mm:ss``, Beijing time)."""
    return site.now().strftime(INF_TIME)


def amount(data: dict[str, Any], key: str) -> Fen:
    """An amount of a queued record's data, back in fen (``"12.34"`` -> 1234)."""
    return parse_yuan(data.get(key))


def first(records: Iterable[QueuedRecord], test: Callable[[QueuedRecord], bool]) -> QueuedRecord | None:
    """The first record passing ``test``."""
    return next((r for r in records if test(r)), None)
