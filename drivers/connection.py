"""The one Connection every driver implements, and the transmit path they all share.

ISO/IEC 7816-3 s12.2 (T=0): a card answers ``61xx`` when it has xx more bytes (00 = 256) for a
GET RESPONSE, and ``6Cxx`` when Le was wrong and xx is the right one. PC/SC stacks differ in whether
they do this for us (pyscard does not), so :meth:`Connection.transmit` does it once for every driver:
a driver implements only :meth:`Connection._exchange` (raw bytes in, raw bytes out).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator

from sscard.apdu.command import Command
from sscard.apdu.errors import APDUFormatError
from sscard.apdu.response import Response
from sscard.drivers.errors import CardUnresponsiveError, TransportError

trace = logging.getLogger("sscard.apdu")

#: bound on GET RESPONSE rounds: a card that keeps answering 61xx is broken or hostile
MAX_GET_RESPONSE = 64
#: bound on the bytes gathered by GET RESPONSE (extended Le maximum)
MAX_RESPONSE_BYTES = 65536
#: what every driver's ``_exchange`` raises (as :class:`TransportError`) once ``disconnect()`` ran
CLOSED_MESSAGE = "The connection to the card is closed"

#: seconds one card command may take before it is given up on (the CLI's watchdog, the service, a
#: PSAM shared between threads); the slowest SSC command (RSA, key generation) takes a few seconds
CARD_TIMEOUT_S = 20.0

#: commands on their way to a card now: id(connection) -> (the connection, when it was sent
#: (time.monotonic()), the thread that sent it). A card that stalls blocks the PC/SC call for good
#: (pcscd + vpcd have no timeout; a real reader's is the card's work waiting time), so the CLI's
#: watchdog (terminal/cli/watchdog.py) and the service (terminal/service.py) read this.
IN_FLIGHT: dict[int, tuple[Connection, float, int]] = {}
#: threads whose card work was given up on (:func:`give_up`) -> why: each card command they send, or
#: were waiting on, raises CardUnresponsiveError, whenever the card answers
ABANDONED: dict[int, str] = {}
#: guards IN_FLIGHT and ABANDONED together: a command's answer and a give-up never cross
_FLIGHT_LOCK = threading.Lock()


def longest_wait(thread: int | None = None) -> tuple[Connection, float] | None:
    """The connection that has waited longest for its card's answer, and for how many seconds; only
    among the commands ``thread`` sent, when given."""
    now = time.monotonic()
    waits = [(connection, now - sent) for connection, sent, sender in list(IN_FLIGHT.values())
             if thread is None or sender == thread]
    return max(waits, key=lambda wait: wait[1]) if waits else None


def give_up(thread: int, timeout_s: float) -> CardUnresponsiveError | None:
    """When a command ``thread`` sent has waited more than ``timeout_s`` seconds: give up on that
    thread's card work and return the error to report; else None (the answer came first: the work
    goes on). Given up on, the thread's waiting command and every later one raise the error, whatever
    the card (or PSAM) answers: what the work would do after that command never happens, so a caller
    that stopped waiting (``sscard serve`` answering its client) is not overtaken by a late answer.
    :func:`forgive` ends it when the thread's work is over."""
    with _FLIGHT_LOCK:
        wait = longest_wait(thread)
        if wait is None or wait[1] <= timeout_s:
            return None
        err = CardUnresponsiveError.after(wait[0].name, wait[1], wait[0].waiting_held)
        ABANDONED[thread] = str(err)
        return err


def forgive(thread: int) -> None:
    """The given-up work of ``thread`` is over: its next work's card commands go through again."""
    with _FLIGHT_LOCK:
        ABANDONED.pop(thread, None)


class Connection(ABC):
    """A channel to one card. Subclasses implement ``_exchange``, ``atr`` and ``disconnect``."""

    #: human name of where the card sits (reader name, ``memory:PROFILE``)
    name: str = "card"
    #: True when the card is a simulator's (in memory, or in vsmartcard's virtual reader): the only
    #: cards the public TEST keys may vouch for (docs/security.md, "Counterfeit card")
    virtual: bool = False

    def __init__(self) -> None:
        self.apdu_count = 0
        #: set once the card raised its security status for this session (a PIN verified, the terminal
        #: authenticated): a shared PC/SC connection then resets the card when it lets go, so that
        #: no other program inherits that status (drivers/pcsc.py)
        self.security_raised = False
        #: what the connection waits for now (:meth:`waiting_for_card`): the card's answer (False), or
        #: the reader letting us at the card (True: a connect, another program's transaction)
        self.waiting_held = False
        self._transactions = 0

    @property
    @abstractmethod
    def atr(self) -> bytes:
        """The card's answer to reset."""

    @abstractmethod
    def _exchange(self, apdu: bytes) -> bytes:
        """Send one command APDU, return the raw response (data || SW1 SW2). Raise our errors only."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the card (and power it down where the driver can)."""

    # --- the reader's own functions (PC/SC part 10: apdu/part10.py) ---------------------------------

    def features(self) -> dict[int, int]:
        """The reader's part 10 features: tag -> control code (a PIN pad's VERIFY PIN DIRECT...);
        none for a reader without (the default)."""
        return {}

    def control(self, code: int, data: bytes) -> bytes:
        """SCardControl: ``data`` to the reader's control ``code``; its answer. Not bounded by the
        card timeout: a PIN pad waits for the holder as long as its own timer says."""
        raise TransportError(f"The reader {self.name} takes no control commands")

    # --- sharing the card with other programs (PC/SC part 5: SCardBeginTransaction) ----------------

    @property
    def in_transaction(self) -> bool:
        """Whether an operation of ours holds the card now (:meth:`transaction`)."""
        return self._transactions > 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the card for one multi-command operation: no other program's command comes between
        ours (a SELECT of theirs between our SELECT and READ, a GET RESPONSE answered to them).
        Nested operations share the outermost one. Raises :class:`CardResetError` (nothing sent)
        when another program reset the card since our last command: :meth:`reconnect`, then start
        the operation again."""
        if self._transactions == 0:
            try:
                with self.waiting_for_card(held=True):
                    self._begin_transaction()
            except CardUnresponsiveError:  # given up on while it waited: if the card came, let it go
                self._end_transaction()
                raise
        self._transactions += 1
        try:
            yield
        finally:
            self._transactions -= 1
            if self._transactions == 0:
                self._end_transaction()

    def _begin_transaction(self) -> None:
        """Take the card for our operation (a card of our own in memory: nothing to take)."""

    def _end_transaction(self) -> None:
        """Let other programs at the card again. Never raises."""

    def reconnect(self) -> None:
        """Renew the session after :class:`CardResetError`: the card's volatile state (selected
        application, PIN verified) is gone, and the caller selects again."""
        self.security_raised = False

    @contextlib.contextmanager
    def waiting_for_card(self, held: bool = False) -> Iterator[None]:
        """Around every call that waits on the card (a command) or on its reader (``held``: a connect,
        a transaction another program holds): in :data:`IN_FLIGHT` meanwhile, so the CLI's watchdog
        and the service bound it by :data:`CARD_TIMEOUT_S`; and not made at all for a thread given
        up on."""
        self.waiting_held = held
        self._wait_begins()
        try:
            yield
        finally:
            why = self._wait_ends()
        if why is not None:  # given up on while it waited: its late answer is not used
            raise CardUnresponsiveError(why)

    def _wait_begins(self) -> None:
        thread = threading.get_ident()
        with _FLIGHT_LOCK:
            why = ABANDONED.get(thread)
            if why is None:
                IN_FLIGHT[id(self)] = (self, time.monotonic(), thread)
        if why is not None:
            raise CardUnresponsiveError(why)

    def _wait_ends(self) -> str | None:
        """Out of :data:`IN_FLIGHT`; why the thread was given up on meanwhile, if it was."""
        with _FLIGHT_LOCK:
            del IN_FLIGHT[id(self)]
            return ABANDONED.get(threading.get_ident())

    def _send(self, command: Command) -> Response:
        tracing = trace.isEnabledFor(logging.DEBUG)  # the hex is built only when someone reads it
        if tracing:
            trace.debug("%s > %s", self.name, command.trace())
        self.apdu_count += 1
        self.waiting_held = False
        self._wait_begins()  # waiting_for_card() inline: a command is the hot path
        try:
            raw = self._exchange(command.to_bytes())
        finally:
            why = self._wait_ends()
        if why is not None:
            raise CardUnresponsiveError(why)
        try:
            response = Response.from_bytes(raw)
        except APDUFormatError as err:
            raise TransportError(f"The card sent a malformed response ({len(raw)} bytes)") from err
        if not tracing:
            pass
        elif command.secret:
            trace.debug("%s < [%d bytes] %04X", self.name, len(response.data), response.sw)
        else:
            trace.debug("%s < %s", self.name, response)
        return response

    def transmit(self, command: Command) -> Response:
        """Send ``command``; do the 6Cxx re-issue and the 61xx GET RESPONSE chain; return the response.

        The status word is not checked here: call :meth:`Response.check` for that. Data that comes
        with a 61xx is kept, and 6100 means 256 more bytes. A 6Cxx is re-issued only for a command
        that has an Le (cases 2 and 4, ISO/IEC 7816-3 s12.2.2: 6Cxx answers a wrong Le): a case-1 or
        case-3 command (VERIFY, CHANGE PIN, UPDATE RECORD) is never sent twice, since the card may
        already have acted on it (a PIN try spent); its 6Cxx is returned as is.
        """
        response = self._send(command)
        if response.sw1 == 0x6C and command.le is not None:
            # wrong Le: re-issue once with the Le the card gave, keeping Lc and data (case 2 and 4)
            response = self._send(command.with_le(response.sw2 or 256))
            if response.sw1 == 0x6C:
                raise TransportError("The card asked twice for another length (6Cxx): giving up")
        if response.sw1 != 0x61:
            return response
        data = bytearray(response.data)
        for _ in range(MAX_GET_RESPONSE):
            get = Command(0x00, 0xC0, 0x00, 0x00, le=response.sw2 or 256, secret=command.secret)
            response = self._send(get)
            data += response.data
            if len(data) > MAX_RESPONSE_BYTES:
                raise TransportError("The card sent more data than any response may hold")
            if response.sw1 != 0x61:
                return Response(bytes(data), response.sw1, response.sw2)
        raise TransportError(f"The card kept answering 'more data' after {MAX_GET_RESPONSE} GET RESPONSE")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
