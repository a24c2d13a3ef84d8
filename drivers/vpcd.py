"""Put a simulated card behind pcscd: a client for the vsmartcard-vpcd reader driver.

vpcd (vsmartcard, ``virtualsmartcard/src/vpcd``) is a pcscd reader driver that listens on TCP
(35963 for "Virtual PCD 00 00", 35964 for "Virtual PCD 00 01") and waits for a card to connect.
Framing (docs/reference/vpcd.md, "Framing"): every message is a 2-byte big-endian
length and a payload. A 1-byte payload is a control: 00 power off, 01 power on, 02 reset (no reply),
04 get ATR (reply: the ATR). A longer payload is a C-APDU, answered by the R-APDU. Closing the socket
is card removal; connecting again is insertion.

The client reconnects with backoff while pcscd is not listening (not started yet, restarting), so a
simulator may be started before or after pcscd. A malformed frame (length 0, EOF mid-frame) is logged
and the connection dropped and re-made: never a traceback.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading

from sscard.apdu.status import SW
from sscard.drivers.errors import TransportError
from sscard.drivers.simulator.base import SimulatedCard

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04

#: the largest payload we accept: an extended APDU (4 + 3 + 65535 + 2) fits; a 2-byte length
#: cannot exceed 65535 anyway, the bound guards other framings
MAX_PAYLOAD = 65536 + 5

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 1.0


class FrameError(TransportError):
    """A vpcd frame that breaks the framing (the connection is dropped and re-made)."""


def reader_name(port: int, base_port: int = DEFAULT_PORT) -> str:
    """The pcscd reader name of a vpcd port with the stock config: 35963 -> "Virtual PCD 00 00"."""
    return f"Virtual PCD 00 {port - base_port:02d}"


def _quickack(sock: socket.socket) -> None:
    """ACK at once (Linux TCP_QUICKACK; it wears off, so after every read). vpcd writes the length and
    the payload in two writes and does not disable Nagle: its payload waits for our ACK of the length,
    and a delayed ACK would cost 40 ms per frame."""
    if QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:
            pass


#: TCP_QUICKACK where the platform has it (Linux only)
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (TCP may deliver a frame in pieces). Raises EOFError on a short read."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(len(buf))
        _quickack(sock)
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes | None:
    """One payload; None on a clean EOF between frames. Raises :class:`FrameError` when malformed."""
    try:
        header = recv_exactly(sock, 2)
    except EOFError as eof:
        if eof.args[0] == 0:
            return None
        raise FrameError("connection closed inside a length field") from None
    (length,) = struct.unpack(">H", header)
    if length == 0:
        raise FrameError("zero-length frame")
    if length > MAX_PAYLOAD:
        raise FrameError(f"frame of {length} bytes is too long")
    try:
        return recv_exactly(sock, length)
    except EOFError as eof:
        raise FrameError(f"connection closed after {eof.args[0]} of {length} bytes") from None


def frame(payload: bytes) -> bytes:
    """Length-prefix ``payload`` for vpcd."""
    if not 0 < len(payload) <= 0xFFFF:
        raise FrameError(f"vpcd payload of {len(payload)} bytes cannot be framed")
    return struct.pack(">H", len(payload)) + payload


class VpcdClient:
    """A simulated card inserted in one vpcd slot.

    ``run()`` serves until :meth:`stop`; :meth:`start` runs it in a daemon thread. :meth:`remove`
    pulls the card (closes the socket: pcscd sees the removal at its next poll); :meth:`insert`
    puts it back. ``remove_after``: the card is pulled when the command after that many C-APDUs
    arrives (it is not answered), to test removal in the middle of a flow.
    """

    def __init__(self, card: SimulatedCard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 remove_after: int | None = None, name: str | None = None) -> None:
        self.card = card
        self.host = host
        self.port = port
        self.remove_after = remove_after
        self.name = name or f"vpcd {host}:{port}"
        self.apdu_count = 0
        #: set while the socket to pcscd is open (the card is in the reader)
        self.connected = threading.Event()
        self._inserted = threading.Event()
        self._inserted.set()
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- control from other threads ---------------------------------------------------------

    def start(self) -> VpcdClient:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Remove the card and end :meth:`run` (joins the thread started by :meth:`start`)."""
        self._stopping.set()
        self._inserted.set()  # wake a removed card's wait
        self._close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def remove(self) -> None:
        """Pull the card out: close the socket and stay out until :meth:`insert`."""
        self._inserted.clear()
        self._close()

    def insert(self) -> None:
        """Put the card back (the client reconnects; vpcd powers it up again)."""
        self.apdu_count = 0
        self._inserted.set()

    @property
    def inserted(self) -> bool:
        return self._inserted.is_set()

    def toggle(self) -> bool:
        """Remove the card if inserted, else insert it; returns whether it is now inserted."""
        if self.inserted:
            self.remove()
        else:
            self.insert()
        return self.inserted

    def _close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's recv
            except OSError:
                pass
            sock.close()

    # --- the serving loop -------------------------------------------------------------------

    def run(self) -> None:
        """Connect, serve, reconnect with backoff, until :meth:`stop`. Never raises."""
        delay = BACKOFF_START_S
        waiting_logged = False
        while not self._stopping.is_set():
            self._inserted.wait()
            if self._stopping.is_set():
                break
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as err:
                if not waiting_logged:
                    log.info("%s: pcscd/vpcd not listening (%s): retrying", self.name, err.strerror or err)
                    waiting_logged = True
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if not self._inserted.is_set() or self._stopping.is_set():
                    sock.close()
                    continue
                self._sock = sock
            delay, waiting_logged = BACKOFF_START_S, False
            log.info("%s: card inserted", self.name)
            self.connected.set()
            try:
                self._serve(sock)
            except FrameError as err:
                log.warning("%s: malformed frame from vpcd (%s): reconnecting", self.name, err)
            except OSError as err:
                if self._sock is sock:
                    log.info("%s: connection lost (%s): reconnecting", self.name, err.strerror or err)
            finally:
                self.connected.clear()
                self._close_if(sock)
                self.card.power_down()  # removal powers the chip down
                log.info("%s: card removed", self.name)
            if self._inserted.is_set() and not self._stopping.is_set():
                self._stopping.wait(delay)  # pcscd went away: do not spin while it restarts

    def _close_if(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
        try:
            sock.close()
        except OSError:
            pass

    def _serve(self, sock: socket.socket) -> None:
        while True:
            payload = read_frame(sock)
            if payload is None:
                if self._sock is sock:
                    log.info("%s: vpcd closed the connection", self.name)
                return
            if len(payload) == 1:
                reply = self._control(payload[0])
            else:
                if self.remove_after is not None and self.apdu_count >= self.remove_after:
                    log.info("%s: removing the card after %d APDUs", self.name, self.apdu_count)
                    self.remove()
                    return
                self.apdu_count += 1
                reply = self._execute(payload)
            if reply is not None:
                sock.sendall(frame(reply))

    def _control(self, code: int) -> bytes | None:
        if code == CTRL_GET_ATR:
            return self.card.atr
        if code == CTRL_POWER_OFF:
            self.card.power_down()
        elif code == CTRL_POWER_ON:
            self.card.power_up()
        elif code == CTRL_RESET:
            self.card.reset()
        else:
            log.warning("%s: unknown vpcd control 0x%02X ignored", self.name, code)
        return None

    def _execute(self, apdu: bytes) -> bytes:
        try:
            reply = self.card.execute(apdu)
        except Exception:  # a simulator bug must not take the reader down
            log.exception("%s: the simulated card failed on a command", self.name)
            return SW.TECHNICAL.to_bytes(2, "big")
        if len(reply) < 2:
            log.warning("%s: the simulated card answered %d bytes: sending 6F00", self.name, len(reply))
            return SW.TECHNICAL.to_bytes(2, "big")
        return reply

    def __enter__(self) -> VpcdClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
