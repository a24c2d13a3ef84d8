"""Start and stop the real PC/SC stack for tests and benches: pcscd with the vsmartcard-vpcd driver,
and simulated cards in its virtual readers ("Virtual PCD 00 00" on TCP 35963, "00 01" on 35964).

Everything waits with a deadline and raises :class:`StackError` on expiry: nothing here can hang.
Used by tests/conftest.py and bench/read_card.py.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from smartcard import scard

from sscard.drivers.simulator.base import SimulatedCard, WrappedCard
from sscard.drivers.vpcd import DEFAULT_PORT, VpcdClient, reader_name

VPCD_CONFIG = Path("/etc/reader.conf.d/vpcd")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
RUN_DIR = Path("/run/pcscd")
ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """pcscd or a simulated card did not come up in time."""


def why_unavailable() -> str | None:
    """None when pcscd and the vpcd driver are installed, else the reason (for pytest.skip)."""
    if shutil.which("pcscd") is None:
        return "pcscd is not installed (apt-get install pcscd vsmartcard-vpcd)"
    if not VPCD_DRIVER.exists() or not VPCD_CONFIG.exists():
        return f"the vsmartcard-vpcd driver is not installed ({VPCD_DRIVER}, {VPCD_CONFIG})"
    return None


def _status(names: list[str] | None = None) -> dict[str, tuple[bool, bytes | None]] | None:
    """reader -> (card present, ATR); None when pcscd does not answer."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return None
    try:
        hresult, readers = scard.SCardListReaders(context, [])
        if hresult != scard.SCARD_S_SUCCESS:
            return {}
        # pyscard passes reader names as ASCII: it cannot ask about others (drivers/readerstate.py does)
        readers = [r for r in readers if r.isascii()]
        if not readers:
            return {}
        hresult, states = scard.SCardGetStatusChange(context, 0, [(r, scard.SCARD_STATE_UNAWARE) for r in readers])
        if hresult != scard.SCARD_S_SUCCESS:
            return {}
        return {r: (bool(ev & scard.SCARD_STATE_PRESENT), bytes(atr) if atr else None) for r, ev, atr in states}
    finally:
        scard.SCardReleaseContext(context)


def pcscd_answers() -> bool:
    """True when a pcscd answers and offers the vpcd readers."""
    status = _status()
    return bool(status) and reader_name(DEFAULT_PORT) in status


def wait_until(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class Pcscd:
    """A pcscd we started (``--foreground``), or the one already running (then never stopped).

    ``config_dir``: pcscd's reader.conf.d (``--config``) instead of /etc/reader.conf.d; an empty
    directory gives a pcscd with no reader at all (no vpcd), which is then what ``start`` waits for.
    """

    def __init__(self, log_path: Path | None = None, config_dir: Path | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path = log_path or Path(tempfile.gettempdir()) / "sscard-pcscd.log"  # overwritten each start
        self.config_dir = config_dir

    def answers(self) -> bool:
        """True when a pcscd answers with the readers this one is configured for."""
        return _status() is not None if self.config_dir is not None else pcscd_answers()

    def start(self, timeout: float = 10.0) -> Pcscd:
        if self.answers():
            return self
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        args = ["pcscd", "--foreground", "--info"]
        if self.config_dir is not None:
            args += ["--config", str(self.config_dir)]
        with open(self.log_path, "wb") as log:
            # --foreground: no daemon, logs to stdout; no --auto-exit, so it stays up between tests
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.proc.poll() is not None or self.answers(), timeout, "pcscd to answer")
        except StackError as err:
            tail = self.log_tail()  # e.g. vpcd's "Address already in use": another pcscd holds its port
            self.stop()
            raise StackError(f"{err}; pcscd's log ends:\n{tail}") from None
        if self.proc.poll() is not None:
            raise StackError(f"pcscd exited with {self.proc.returncode}: {self.log_tail()}")
        return self

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the pcscd we started (and wait until the service is gone)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again (only a pcscd we started)."""
        if self.proc is None:
            raise StackError("pcscd was not started by the tests: not restarting it")
        self.stop()
        wait_until(lambda: _status() is None, timeout, "pcscd to stop")
        self.start(timeout)

    @contextlib.contextmanager
    def replaced_by(self, other: Pcscd, timeout: float = 10.0) -> Iterator[Pcscd]:
        """Run ``other`` (a pcscd configured otherwise) instead of this one, then start this one again."""
        if self.proc is None:
            raise StackError("pcscd was not started by the tests: not replacing it")
        self.stop()
        wait_until(lambda: _status() is None, timeout, "pcscd to stop")
        try:
            yield other.start(timeout)
        finally:
            other.stop()
            wait_until(lambda: _status() is None, timeout, "the other pcscd to stop")
            self.start(timeout)


def card_state(reader: str) -> tuple[bool, bytes | None]:
    status = _status() or {}
    return status.get(reader, (False, None))


def wait_card(reader: str, present: bool = True, timeout: float = 10.0, atr: bytes | None = None) -> None:
    """Wait until pcscd sees a card (with ``atr`` if given) in ``reader``, or sees none."""
    def ok() -> bool:
        here, card_atr = card_state(reader)
        return here and (atr is None or card_atr == atr) if present else not here
    wait_until(ok, timeout, f"{'a card in' if present else 'no card in'} {reader}")


class ThreadCard:
    """A simulated card served in this process by :class:`VpcdClient` (fast; removable on demand)."""

    def __init__(self, card: SimulatedCard, slot: int = 0, remove_after: int | None = None) -> None:
        self.port = DEFAULT_PORT + slot
        self.reader = reader_name(self.port)
        self.card = card
        self.client = VpcdClient(card, port=self.port, remove_after=remove_after)

    def start(self, timeout: float = 10.0) -> ThreadCard:
        wait_card(self.reader, present=False, timeout=timeout)  # the previous card has left
        self.client.start()
        wait_card(self.reader, True, timeout, atr=self.card.atr)
        return self

    def remove(self, wait: bool = True) -> None:
        self.client.remove()
        if wait:
            wait_card(self.reader, present=False)

    def insert(self, wait: bool = True) -> None:
        self.client.insert()
        if wait:
            wait_card(self.reader, True, atr=self.card.atr)

    def stop(self) -> None:
        self.client.stop()
        try:
            wait_card(self.reader, present=False, timeout=5)
        except StackError:
            pass


class ProcessCard:
    """``sscard simulate --card PROFILE --port P`` as a subprocess (the realistic end-to-end set-up)."""

    def __init__(self, profile: str, slot: int = 0, remove_after: int | None = None) -> None:
        self.port = DEFAULT_PORT + slot
        self.reader = reader_name(self.port)
        self.args = [sys.executable, "-c", "from sscard.terminal.cli import main; main()",
                     "simulate", "--card", profile, "--port", str(self.port)]
        if remove_after is not None:
            self.args += ["--remove-after", str(remove_after)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> ProcessCard:
        wait_card(self.reader, present=False, timeout=timeout)
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_until(lambda: self.proc.poll() is not None or card_state(self.reader)[0], timeout,
                       f"sscard simulate to insert its card in {self.reader}")
        except StackError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise StackError(f"sscard simulate exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
        return self

    def toggle(self) -> None:
        """SIGUSR1: remove the card, or put it back."""
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self, timeout: float = 5.0) -> str:
        """SIGTERM; returns the simulator's stderr."""
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=timeout)
        try:
            wait_card(self.reader, present=False, timeout=timeout)
        except StackError:
            pass
        return err.decode(errors="replace")


class LongFormOnly(WrappedCard):
    """A card that takes neither SELECT P2 0C nor READ RECORD by SFI (6A 86), as some cards do: it is
    read the public readers' long way (terminal/card.py, "The identity read")."""

    def execute(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xA4 and apdu[3] == 0x0C or apdu[1] == 0xB2 and apdu[3] >> 3:
            return b"\x6a\x86"
        return super().execute(apdu)


class MiniCard:
    """A small SSC-shaped chip for bridge tests that need no card profile: the SSC application with
    EF05/EF06 record files, T=0 style 61xx on SELECT by name (``t0``), 6Cxx on a wrong Le for READ
    RECORD (``strict_le``), power state recorded. ``ssc=False``: a card without the SSC application.
    """

    FCI = bytes.fromhex("6F098407") + b"sx1.sh."

    def __init__(self, atr: bytes = bytes.fromhex("3B6800000073C84013009000"), t0: bool = False,
                 strict_le: bool = False, ssc: bool = True) -> None:
        self.atr = atr
        self.t0, self.strict_le, self.ssc = t0, strict_le, ssc
        self.records = {
            0xEF05: [bytes([tag, 4]) + bytes([tag] * 4) for tag in range(1, 8)],
            0xEF06: [bytes([tag, 3]) + b"abc" for tag in (0x08, 0x09, 0x4E, 0x0A, 0x0B, 0x0C, 0x0D)],
        }
        self.powered = False
        self.power_cycles = 0
        self.commands: list[bytes] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self.app_selected = False
        self.ef: int | None = None
        self.pending = b""

    def power_up(self) -> None:
        self.powered = True
        self.power_cycles += 1
        self._reset_state()

    def power_down(self) -> None:
        self.powered = False
        self._reset_state()

    def reset(self) -> None:
        self._reset_state()

    def execute(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        ins, p1, p2 = apdu[1], apdu[2], apdu[3]
        body = apdu[5:5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xA4 and p1 == 0x04:
            if not self.ssc or not body.startswith(b"sx1.sh."):
                return b"\x6a\x82"
            self.app_selected = True
            if self.t0:
                self.pending = self.FCI
                return bytes((0x61, len(self.FCI)))
            return b"\x90\x00"
        if ins == 0xA4 and p1 == 0x00:
            fid = int.from_bytes(body, "big")
            if not self.app_selected or fid not in self.records:
                return b"\x6a\x82"
            self.ef = fid
            return b"\x90\x00"
        if ins == 0xC0:
            data, self.pending = self.pending, b""
            return data + b"\x90\x00" if data else b"\x6f\x00"
        if ins == 0xB2:
            if self.ef is None or not 1 <= p1 <= len(self.records[self.ef]) or p2 != 0x04:
                return b"\x6a\x83"
            record = self.records[self.ef][p1 - 1]
            le = apdu[4] if len(apdu) == 5 else 0
            if self.strict_le and le not in (0, len(record)):
                return bytes((0x6C, len(record)))
            return record + b"\x90\x00"
        return b"\x6d\x00"
