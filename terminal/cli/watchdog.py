"""The card watchdog: a card that stops answering must not freeze the counter.

PC/SC has no timeout of its own on a command: a real reader gives up after the card's work waiting
time (ISO/IEC 7816-3 s10.2), but pcscd's virtual reader (vpcd) and a stalled in-memory chip wait
forever, and the call cannot be interrupted from Python. So the CLI runs a watchdog thread: when one
command has waited longer than the card timeout (``--card-timeout``, ``$SSCARD_CARD_TIMEOUT``,
default :data:`DEFAULT_TIMEOUT_S`), it prints the clerk's error and ends the process with the exit
code of an unresponsive card (4). The card is stuck inside a command, so no flow is between its
card step and its queue step: nothing half-done can be recorded (the queue commits whole records).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from apdu.errors import CardUnresponsiveError
from drivers.connection import longest_wait

log = logging.getLogger(__name__)

#: seconds one command may take; the slowest SSC command (RSA, key generation) takes a few seconds
DEFAULT_TIMEOUT_S = 20.0
#: how often the watchdog looks
POLL_S = 0.2

_lock = threading.Lock()
_timeout_s: float = DEFAULT_TIMEOUT_S
_thread: threading.Thread | None = None


def configured_timeout() -> float:
    """``$SSCARD_CARD_TIMEOUT`` in seconds when set to a positive number, else the default."""
    try:
        value = float(os.environ.get("SSCARD_CARD_TIMEOUT", ""))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def arm(timeout_s: float) -> None:
    """Start the watchdog (once per process) or change its timeout."""
    global _timeout_s, _thread
    with _lock:
        _timeout_s = timeout_s
        if _thread is None:
            _thread = threading.Thread(target=_watch, name="sscard-card-watchdog", daemon=True)
            _thread.start()


def _watch() -> None:
    event = threading.Event()
    while not event.wait(POLL_S):
        wait = longest_wait()
        if wait is not None and wait[1] > _timeout_s:
            name, seconds = wait
            err = CardUnresponsiveError(
                f"The card in {name} has not answered for {seconds:.0f} s: take it out and insert it again"
            )
            log.debug("watchdog: %s", err)
            sys.stdout.flush()
            print(f"Error: {err}", file=sys.stderr, flush=True)
            os._exit(err.exit_code)
