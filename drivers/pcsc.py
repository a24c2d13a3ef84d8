"""The PC/SC driver: real readers and pcscd's virtual readers, through pyscard.

PC/SC part 5 (ISO/IEC 7816 over PC/SC: SCardEstablishContext, SCardListReaders, SCardConnect,
SCardTransmit, SCardGetStatusChange). We call pyscard's thin ``smartcard.scard`` layer, which returns
the PC/SC status code (hresult) of every call instead of raising: each code maps to one of our errors
in :data:`HRESULT_ERRORS`, so no pyscard exception can escape, and the pcscd round trip is all the
cost (bench/read_card.py). ``bytes`` above this module, ``list[int]`` only at the pyscard edge.

Reader specs (as ``opensc-tool -r`` takes them, docs/pcsc.md): an index (``"0"``), a reader name
(exact, else a unique case-insensitive part of it), or the card's ATR in hex (first reader holding a
card with that ATR; spaces and colons allowed; 2 bytes or more, starting 3B or 3F, so "00 01" is a
part of "Virtual PCD 00 01").
"""
from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from smartcard import scard

from sscard.apdu import part10
from sscard.apdu.atr import TS
from sscard.apdu.errors import MalformedError, SSCardError
from sscard.drivers import readerstate
from sscard.drivers.connection import CLOSED_MESSAGE, Connection
from sscard.drivers.errors import (
    CardRemovedError,
    CardResetError,
    CardUnresponsiveError,
    NoCardError,
    NoReaderError,
    ReaderError,
    ReaderNotFoundError,
    ServiceNotRunningError,
    SharingViolationError,
    TransportError,
)

log = logging.getLogger(__name__)

#: how vsmartcard-vpcd names its readers ("Virtual PCD 00 00"): the cards in them are simulated
VIRTUAL_READER = "Virtual PCD "
#: pcsc-lite's pseudo reader whose state changes when a reader is plugged or unplugged
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"

PROTOCOLS = {
    None: scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
    "any": scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
    "T0": scard.SCARD_PROTOCOL_T0,
    "T1": scard.SCARD_PROTOCOL_T1,
}
PROTOCOL_NAMES = {scard.SCARD_PROTOCOL_T0: "T=0", scard.SCARD_PROTOCOL_T1: "T=1"}

DISPOSITIONS = {
    "unpower": scard.SCARD_UNPOWER_CARD,
    "reset": scard.SCARD_RESET_CARD,
    "leave": scard.SCARD_LEAVE_CARD,
}

#: how long to wait for pcscd to notice a removal after a failed exchange (its poll period is 0.4 s)
REMOVAL_GRACE_S = 1.2

_U32 = 0xFFFFFFFF
#: SCardStatus card state "absent": pcsc-lite's is one bit of a bitmask (reader.h: SCARD_ABSENT 0x0002,
#: SCARD_PRESENT 0x0004, SCARD_SWALLOWED 0x0008, ...); Windows's is one value of an enumeration
#: (winscard.h: SCARD_ABSENT 1, SCARD_PRESENT 2, SCARD_SWALLOWED 3, SCARD_POWERED 4, SCARD_NEGOTIABLE 5,
#: SCARD_SPECIFIC 6), where a bit test would read 3 and 5 as absent. pyscard exports neither.
SCARD_ABSENT = 0x0002
WINDOWS_SCARD_ABSENT = 1


def card_absent(state: int, platform: str = sys.platform) -> bool:
    """Whether SCardStatus's card state says the card is gone, read the platform's way."""
    return state == WINDOWS_SCARD_ABSENT if platform == "win32" else bool(state & SCARD_ABSENT)


def _code(hresult: int) -> int:
    return hresult & _U32


#: PC/SC status codes -> (our error class, clerk message or None for the class's own message)
HRESULT_ERRORS: dict[int, tuple[type[SSCardError], str | None]] = {
    _code(scard.SCARD_E_NO_SERVICE): (ServiceNotRunningError, "PC/SC service not running: start pcscd, or ask IT to"),
    _code(scard.SCARD_E_SERVICE_STOPPED): (ServiceNotRunningError, "PC/SC service not running (it stopped): start pcscd, or ask IT to"),
    _code(scard.SCARD_E_NO_READERS_AVAILABLE): (NoReaderError, None),
    _code(scard.SCARD_E_UNKNOWN_READER): (ReaderNotFoundError, None),
    _code(scard.SCARD_E_READER_UNAVAILABLE): (ReaderError, "The card reader was disconnected: plug it in again"),
    _code(scard.SCARD_E_SHARING_VIOLATION): (SharingViolationError, None),
    _code(scard.SCARD_E_NO_SMARTCARD): (NoCardError, None),
    _code(scard.SCARD_W_REMOVED_CARD): (CardRemovedError, None),
    _code(scard.SCARD_W_RESET_CARD): (CardResetError, None),
    _code(scard.SCARD_W_UNRESPONSIVE_CARD): (CardUnresponsiveError, None),
    _code(scard.SCARD_W_UNPOWERED_CARD): (CardUnresponsiveError, None),
    _code(scard.SCARD_E_PROTO_MISMATCH): (TransportError, "The card does not speak the requested protocol (T=0/T=1)"),
    _code(scard.SCARD_E_TIMEOUT): (CardUnresponsiveError, None),
}


def error_for(hresult: int, doing: str) -> SSCardError:
    """Our error for a failed PC/SC call (``doing`` says what we were doing, for the log)."""
    code = _code(hresult)
    cls, message = HRESULT_ERRORS.get(code, (TransportError, None))
    detail = scard.SCardGetErrorMessage(hresult)
    log.debug("PC/SC %s failed: 0x%08X %s", doing, code, detail)
    if cls is TransportError and message is None:
        message = f"Communication with the card failed ({detail.rstrip('.')}, 0x{code:08X})"
    return cls(message)


def _check(hresult: int, doing: str) -> None:
    if _code(hresult) != scard.SCARD_S_SUCCESS:
        raise error_for(hresult, doing)


class Context:
    """One PC/SC context (SCardEstablishContext ... SCardReleaseContext)."""

    def __init__(self) -> None:
        try:
            hresult, self.handle = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        except Exception as err:  # pyscard's own exceptions are outside SmartcardException
            raise ServiceNotRunningError(f"PC/SC service not running ({err})") from err
        _check(hresult, "establish context")

    def readers(self) -> list[str]:
        """Reader names in pcscd's order; an empty list when there are none."""
        hresult, names = scard.SCardListReaders(self.handle, [])
        if _code(hresult) == _code(scard.SCARD_E_NO_READERS_AVAILABLE):
            return []
        _check(hresult, "list readers")
        return list(names)

    def status(self, names: list[str]) -> list[ReaderStatus]:
        """The current state of each reader (SCardGetStatusChange with timeout 0)."""
        if not names:
            return []
        hresult, states = self.get_status_change(0, [(name, scard.SCARD_STATE_UNAWARE) for name in names])
        _check(hresult, "get reader status")
        return [ReaderStatus.from_state(name, event, atr) for name, event, atr in states]

    def get_status_change(self, timeout_ms: int, readers: list[tuple[str, int]]) -> tuple[int, list[Any]]:
        """SCardGetStatusChange, for reader names of any characters (drivers/readerstate.py)."""
        if readerstate.needs_native([name for name, _ in readers]):
            return readerstate.get_status_change(self.handle, timeout_ms, readers)
        result: tuple[int, list[Any]] = scard.SCardGetStatusChange(self.handle, timeout_ms, readers)
        return result

    def release(self) -> None:
        try:
            scard.SCardReleaseContext(self.handle)
        except Exception:  # releasing a context of a daemon that went away: nothing to do
            log.debug("release context failed", exc_info=True)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class ReaderStatus:
    """What a reader holds right now."""

    name: str
    present: bool
    atr: bytes | None
    #: the card is mute (no ATR): inserted the wrong way, or broken
    mute: bool = False
    #: another program has the card open (``exclusive``: and nobody else may)
    in_use: bool = False
    exclusive: bool = False
    #: pcsc-lite's event counter (high 16 bits of dwEventState): changes on every insertion/removal
    events: int = 0

    @classmethod
    def from_state(cls, name: str, state: int, atr: list[int] | None) -> ReaderStatus:
        present = bool(state & scard.SCARD_STATE_PRESENT)
        return cls(
            name=name,
            present=present,
            atr=bytes(atr) if present and atr else None,
            mute=bool(state & scard.SCARD_STATE_MUTE),
            in_use=bool(state & scard.SCARD_STATE_INUSE),
            exclusive=bool(state & scard.SCARD_STATE_EXCLUSIVE),
            events=(state >> 16) & 0xFFFF,
        )


def list_readers() -> list[str]:
    """Names of the PC/SC readers (empty list: none). Raises :class:`ServiceNotRunningError`."""
    with Context() as context:
        return context.readers()


def reader_status() -> list[ReaderStatus]:
    """Every reader with whether a card is present and its ATR."""
    with Context() as context:
        return context.status(context.readers())


_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2}[\s:]?)+$")




def parse_atr(spec: str) -> bytes | None:
    """The ATR ``spec`` spells in hex (``3B8F80...``, ``3B 8F 80``, ``3B:8F:80``), else None.

    Only ATR-looking hex counts: at least TS and T0 (2 bytes), TS being 3B or 3F (ISO/IEC 7816-3
    s8.1). Any other hex (``00 01``) is a part of a reader name ("Virtual PCD 00 01").
    """
    spec = spec.strip()
    if not _HEX.match(spec):
        return None
    atr = bytes.fromhex(re.sub(r"[\s:]", "", spec))
    return atr if len(atr) >= 2 and atr[0] in TS else None


def resolve(spec: str, context: Context) -> str:
    """The reader name ``spec`` designates (index, name, unique part of a name, or card ATR)."""
    names = context.readers()
    if not names:
        raise NoReaderError()
    available = "; ".join(f"{i}: {n}" for i, n in enumerate(names))
    spec = spec.strip()
    if spec.isdigit():
        index = int(spec)
        if index < len(names):
            return names[index]
        raise ReaderNotFoundError(f"No reader number {index}. Readers: {available}")
    if spec in names:
        return spec
    atr = parse_atr(spec)
    if atr is not None:
        for status in context.status(names):
            if status.atr == atr:
                return status.name
        raise NoCardError(f"No card with ATR {atr.hex(' ').upper()} in any reader. Readers: {available}")
    matches = [n for n in names if spec.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReaderNotFoundError(f"'{spec}' matches several readers ({'; '.join(matches)}): be more precise")
    raise ReaderNotFoundError(f"Reader '{spec}' not found. Readers: {available}")


class PCSCConnection(Connection):
    """A card in a PC/SC reader, shared with other programs unless ``exclusive``.

    Each multi-command operation of ours is a PC/SC transaction (:meth:`Connection.transaction`).
    ``disconnect`` (``disposition=None``) leaves a shared card powered, so another program's session
    on it goes on, unless the card's security status was raised in this session (a PIN verified,
    the terminal authenticated): then it resets the card, so that no other program inherits it; an
    exclusive connection powers the card down. ``"unpower"``, ``"reset"`` and ``"leave"`` force one.
    Connecting, and waiting for another program's transaction, count as waiting for the card
    (:meth:`Connection.waiting_for_card`): bounded by the card timeout like a command.
    """

    def __init__(self, context: Context, reader: str, exclusive: bool = False,
                 protocol: str | None = None, disposition: str | None = None) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise TransportError(f"Unknown protocol {protocol!r}: use T0, T1 or any")
        if disposition is not None and disposition not in DISPOSITIONS:
            raise TransportError(f"Unknown disposition {disposition!r}: use {', '.join(DISPOSITIONS)}")
        self.name = reader
        self.virtual = reader.startswith(VIRTUAL_READER)
        self.exclusive = exclusive
        self._context: Context | None = None
        self._card: int | None = None
        self._features: dict[int, int] | None = None
        self._disposition: int | None = None if disposition is None else DISPOSITIONS[disposition]
        self._share = scard.SCARD_SHARE_EXCLUSIVE if exclusive else scard.SCARD_SHARE_SHARED
        self._protocols = PROTOCOLS[protocol]
        with self.waiting_for_card(held=True):
            hresult, card, self._protocol = scard.SCardConnect(context.handle, reader, self._share, self._protocols)
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            raise self._connect_error(hresult)
        self._card = card
        try:
            with self.waiting_for_card():
                self._atr = self._read_atr()
        except BaseException:
            self.disconnect()
            raise
        self._context = context  # ours from here on: released by disconnect()
        log.info("connected to %s (%s, %s)", reader, self.protocol, "exclusive" if exclusive else "shared")

    def _connect_error(self, hresult: int) -> SSCardError:
        err = error_for(hresult, f"connect to {self.name}")
        if isinstance(err, CardRemovedError):  # removed before we got it: for us, no card
            return NoCardError()
        return err

    def _read_atr(self) -> bytes:
        hresult, _reader, _state, _protocol, atr = scard.SCardStatus(self._card)
        _check(hresult, "read the ATR")
        return bytes(atr)

    def _begin_transaction(self) -> None:
        if self._card is None:
            raise TransportError(CLOSED_MESSAGE)
        _check(scard.SCardBeginTransaction(self._card), "begin a transaction")

    def _end_transaction(self) -> None:
        if self._card is None:
            return
        try:
            hresult = scard.SCardEndTransaction(self._card, scard.SCARD_LEAVE_CARD)
            if _code(hresult) != scard.SCARD_S_SUCCESS:  # the card left meanwhile: nothing to end
                log.debug("end transaction: %s", scard.SCardGetErrorMessage(hresult))
        except Exception:
            log.debug("end transaction failed", exc_info=True)

    def features(self) -> dict[int, int]:
        """CM_IOCTL_GET_FEATURE_REQUEST (PC/SC part 10 s2.3), asked once a session; a reader that does
        not answer it (vpcd's virtual readers) has none."""
        if self._features is None:
            self._features = {}
            if self._card is not None:
                try:
                    hresult, answer = scard.SCardControl(self._card, scard.SCARD_CTL_CODE(3400), [])
                    if _code(hresult) == scard.SCARD_S_SUCCESS:
                        self._features = part10.parse_features(bytes(answer))
                except (MalformedError, TypeError, ValueError, OverflowError):
                    log.debug("the reader's feature list is not part 10's", exc_info=True)
        return self._features

    def control(self, code: int, data: bytes) -> bytes:
        if self._card is None:
            raise TransportError(CLOSED_MESSAGE)
        hresult, answer = scard.SCardControl(self._card, code, list(data))
        _check(hresult, "control the reader")
        return bytes(answer)

    def reconnect(self) -> None:
        """SCardReconnect after another program reset the card (PC/SC part 5), the card left as it is."""
        if self._card is None:
            raise TransportError(CLOSED_MESSAGE)
        with self.waiting_for_card(held=True):
            hresult, protocol = scard.SCardReconnect(self._card, self._share, self._protocols, scard.SCARD_LEAVE_CARD)
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            raise self._connect_error(hresult)
        self._protocol = protocol
        with self.waiting_for_card():
            self._atr = self._read_atr()
        super().reconnect()
        log.info("reconnected to %s after another program reset the card", self.name)

    @property
    def protocol(self) -> str:
        """``T=0`` or ``T=1``: what the reader and the card agreed on."""
        return PROTOCOL_NAMES.get(self._protocol, f"0x{self._protocol:X}")

    @property
    def atr(self) -> bytes:
        return self._atr

    def _exchange(self, apdu: bytes) -> bytes:
        if self._card is None:
            raise TransportError(CLOSED_MESSAGE)
        hresult, response = scard.SCardTransmit(self._card, self._protocol, list(apdu))
        code = _code(hresult)
        if code == scard.SCARD_S_SUCCESS and len(response) >= 2:
            return bytes(response)
        if code == scard.SCARD_S_SUCCESS:
            # vpcd (and some readers) report "success, no bytes" when the card went away mid-command
            if self._card_gone():
                raise CardRemovedError()
            raise TransportError(f"The card sent a malformed response ({len(response)} bytes)")
        err = error_for(hresult, "transmit")
        if type(err) is TransportError and self._card_gone():
            # the reader lost the card mid-command; pcscd reports the removal a poll later
            raise CardRemovedError() from err
        raise err

    def _card_gone(self) -> bool:
        """After a failed exchange: did the card leave the reader? (waits for pcscd's next poll)"""
        deadline = time.monotonic() + REMOVAL_GRACE_S
        while True:
            hresult, _reader, state, _protocol, _atr = scard.SCardStatus(self._card)
            code = _code(hresult)
            if code in (_code(scard.SCARD_W_REMOVED_CARD), _code(scard.SCARD_E_NO_SMARTCARD)):
                return True
            if code == scard.SCARD_S_SUCCESS and card_absent(state):
                return True
            if code not in (scard.SCARD_S_SUCCESS, _code(scard.SCARD_W_RESET_CARD)) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    @property
    def disposition(self) -> int:
        """What :meth:`disconnect` does to the card (class docstring)."""
        if self._disposition is not None:
            return self._disposition
        if self.exclusive:
            return int(scard.SCARD_UNPOWER_CARD)
        return int(scard.SCARD_RESET_CARD if self.security_raised else scard.SCARD_LEAVE_CARD)

    def disconnect(self) -> None:
        """Release the card (class docstring: left, reset or powered down) and the PC/SC context.
        Never raises."""
        if self._card is not None:
            disposition = self.disposition
            card, self._card = self._card, None
            try:
                hresult = scard.SCardDisconnect(card, disposition)
                if _code(hresult) != scard.SCARD_S_SUCCESS:
                    log.debug("disconnect: %s", scard.SCardGetErrorMessage(hresult))
            except Exception:
                log.debug("disconnect failed", exc_info=True)
        if self._context is not None:
            context, self._context = self._context, None
            context.release()

    def __del__(self) -> None:
        if getattr(self, "_card", None) is not None or getattr(self, "_context", None) is not None:
            self.disconnect()


def connect(spec: str, exclusive: bool = False, protocol: str | None = None,
            disposition: str | None = None) -> PCSCConnection:
    """Connect to the card in the reader ``spec`` designates (module docstring).

    Shared mode unless ``exclusive``; ``protocol`` ``"T0"``, ``"T1"`` or None/``"any"``. Raises
    :class:`ServiceNotRunningError`, :class:`NoReaderError`, :class:`ReaderNotFoundError`,
    :class:`NoCardError`, :class:`SharingViolationError`, :class:`CardUnresponsiveError`.
    """
    context = Context()
    try:
        return PCSCConnection(context, resolve(spec, context), exclusive, protocol, disposition)
    except BaseException:
        context.release()
        raise


# --- reader events ----------------------------------------------------------------------------

INSERTED, REMOVED, PRESENT = "inserted", "removed", "present"
SERVICE_LOST, SERVICE_BACK, TICK = "service-lost", "service-back", "tick"

#: PC/SC codes after which the context is dead (pcscd stopped or restarted) and must be re-made
_CONTEXT_LOST = {
    _code(scard.SCARD_E_NO_SERVICE), _code(scard.SCARD_E_SERVICE_STOPPED),
    _code(scard.SCARD_E_INVALID_HANDLE), _code(scard.SCARD_F_COMM_ERROR),
    _code(scard.SCARD_E_INVALID_PARAMETER),
}


@dataclass(frozen=True)
class ReaderEvent:
    """One thing :func:`watch` saw. ``kind``: ``inserted``, ``removed``, ``present`` (a card already
    there when watching started), ``service-lost`` / ``service-back`` (pcscd stopped / answers again)
    and ``tick`` (nothing happened for a while); ``reader`` is empty for the last three."""

    kind: str
    reader: str
    atr: bytes | None = None


def _diff(known: dict[str, ReaderStatus], now: list[ReaderStatus], first: bool,
          trust_counter: bool) -> list[ReaderEvent]:
    """Events that take ``known`` to ``now`` (and update ``known``)."""
    events: list[ReaderEvent] = []
    seen = {s.name for s in now}
    for name in [n for n in known if n not in seen]:  # reader unplugged with its card
        events.append(ReaderEvent(REMOVED, name, known.pop(name).atr))
    for status in now:
        old = known.get(status.name)
        was = old is not None and old.present
        if old is not None and was and status.present and (old.atr != status.atr
                                                           or (trust_counter and old.events != status.events)):
            events.append(ReaderEvent(REMOVED, status.name, old.atr))  # swapped between two looks
            was = False
        if old is not None and was and not status.present:
            events.append(ReaderEvent(REMOVED, status.name, old.atr))
        elif not was and status.present and not status.mute:
            events.append(ReaderEvent(PRESENT if first else INSERTED, status.name, status.atr))
        if status.present and status.mute and not was:
            status = ReaderStatus(status.name, False, None, mute=True)  # report it once it answers
        known[status.name] = status
    return events


def watch(poll_s: float = 0.5, retry_s: float = 1.0) -> Iterator[ReaderEvent]:
    """Card insertions and removals in every reader, forever (the caller stops iterating).

    Our own loop on SCardGetStatusChange (PC/SC part 5), not pyscard's monitor thread (which dies
    when pcscd restarts). When pcscd stops or restarts, the context dies: we yield ``service-lost``,
    try again every ``retry_s``, yield ``service-back``, and compare the readers with what we knew, so
    a card that stayed in its reader is not reported again and one taken out meanwhile is reported
    removed. Readers plugged in or out are noticed through pcsc-lite's ``\\\\?PnP?\\Notification``
    pseudo reader. A ``tick`` event comes at least every ``poll_s`` (and every ``retry_s`` while
    pcscd is down) so the consumer regains control for its deadlines: ignore it otherwise.
    """
    known: dict[str, ReaderStatus] = {}
    first, service_up = True, None
    while True:
        try:
            context = Context()
            names = context.readers()
        except ServiceNotRunningError:
            if service_up is not False:
                service_up = False
                yield ReaderEvent(SERVICE_LOST, "")
            time.sleep(retry_s)
            yield ReaderEvent(TICK, "")
            continue
        if service_up is False:
            yield ReaderEvent(SERVICE_BACK, "")
        service_up = True
        try:
            # pcsc-lite's event counters restart with pcscd: trust them within the first context only
            yield from _watch_context(context, names, known, first, first, poll_s)
        finally:
            context.release()
        first, service_up = False, False
        yield ReaderEvent(SERVICE_LOST, "")


def _watch_context(context: Context, names: list[str], known: dict[str, ReaderStatus], first: bool,
                   trust_counter: bool, poll_s: float) -> Iterator[ReaderEvent]:
    """Events until the context dies (pcscd stopped or restarted)."""
    timeout_ms = max(1, int(poll_s * 1000))
    while True:
        query = [(n, scard.SCARD_STATE_UNAWARE) for n in names + [PNP_NOTIFICATION]]
        hresult, states = context.get_status_change(0, query)
        code = _code(hresult)
        if code in _CONTEXT_LOST:
            return
        # with no reader the query is the PnP pseudo reader alone, which reports no change to an
        # UNAWARE look: the timeout-0 call times out, and that is "the states as they are" too
        if code in (scard.SCARD_S_SUCCESS, _code(scard.SCARD_E_TIMEOUT)):
            now = [ReaderStatus.from_state(n, ev, atr) for n, ev, atr in states if n != PNP_NOTIFICATION]
            yield from _diff(known, now, first, trust_counter)
            first, trust_counter = False, True
            # block until something changes, from the states just read
            current = [(n, ev & ~scard.SCARD_STATE_CHANGED) for n, ev, _atr in states]
            while True:
                hresult, _ = context.get_status_change(timeout_ms, current)
                code = _code(hresult)
                if code != _code(scard.SCARD_E_TIMEOUT):
                    break
                yield ReaderEvent(TICK, "")
            if code in _CONTEXT_LOST:
                return
        try:  # a change, or an unknown reader: the reader list may differ
            names = context.readers()
        except ServiceNotRunningError:
            return
        except ReaderError:
            names = []
