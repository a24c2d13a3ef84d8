"""The card watchdog: a card that stops answering must not freeze the counter.

PC/SC has no timeout of its own on a command: a real reader gives up after the card's work waiting
time (ISO/IEC 7816-3 s10.2), but pcscd's virtual reader (vpcd) and a stalled in-memory chip wait
forever, and the call cannot be interrupted from Python. So the CLI runs a watchdog thread: when one
command has waited longer than the card timeout (``--card-timeout``, ``$SSCARD_CARD_TIMEOUT``,
default :data:`DEFAULT_TIMEOUT_S`), it ends the process from that thread, while the flow's own
thread is still stuck inside the card command (no exception, no ``finally`` of the flow runs).

What it prints and the exit code depend on where the flow is stuck (docs/security.md, "Hostile card"):

- by default: the clerk's error ("has not answered for N s") and the exit code of an unresponsive
  card (4). A flow stuck before it queued anything has recorded nothing (the queue commits whole
  records).
- a flow that has already queued its record and is in a best-effort card step after it (the pharmacy's
  "mark the old card replaced") registers :func:`on_timeout`: the handler reports the flow's result
  (text or ``--json``) with a note that the card did not answer, and the process exits 0, because
  the transaction is recorded.
- a flow between two phases (the bank counter: its ``SS01`` record queued *held*, the card being
  changed) registers a handler that says how to finish (run the command again with the card), exit
  4; the record stays held, never sent, until that run releases or withdraws it.

Output after a record is queued goes through :data:`OUTPUT` (a lock), which the watchdog holds while
it reports and exits: the flow's thread never prints half a result beside the watchdog's.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable

from sscard.drivers.connection import CARD_TIMEOUT_S, Connection, longest_wait
from sscard.drivers.errors import CardUnresponsiveError
from sscard.terminal.cli.exits import exit_code

log = logging.getLogger(__name__)

#: seconds one command may take (drivers.connection.CARD_TIMEOUT_S), unless told otherwise
DEFAULT_TIMEOUT_S = CARD_TIMEOUT_S
#: how often the watchdog looks
POLL_S = 0.2

#: held around every line a counter command prints, and by the watchdog while it reports and exits
OUTPUT = threading.RLock()

_lock = threading.Lock()
_timeout_s: float = DEFAULT_TIMEOUT_S
_thread: threading.Thread | None = None
#: what to do when a card stalls: given the clerk's error text, print what must be said and return
#: the exit code (None: the default, the error and exit 4)
_handler: Callable[[str], int] | None = None


def arm(timeout_s: float) -> None:
    """Start the watchdog (once per process) or change its timeout."""
    global _timeout_s, _thread
    with _lock:
        _timeout_s = timeout_s
        if _thread is None:
            _thread = threading.Thread(target=_watch, name="sscard-card-watchdog", daemon=True)
            _thread.start()


def on_timeout(handler: Callable[[str], int] | None) -> None:
    """From now on a stalled card calls ``handler(error_text)``, which prints what the clerk must read
    and returns the exit code; ``None`` restores the default (error, exit 4)."""
    global _handler
    with OUTPUT:
        _handler = handler


def disarm() -> float:
    """Leave stalled cards to the caller from now on, and return the card timeout in force: ``sscard
    serve`` gives up on one request's card itself (terminal/service.py), since one stalled card must
    not end the service and every other reader's request with it."""
    global _timeout_s
    with _lock:
        timeout, _timeout_s = _timeout_s, math.inf
    return timeout


def _stalled() -> tuple[Connection, float] | None:
    wait = longest_wait()
    return wait if wait is not None and wait[1] > _timeout_s else None


def _watch() -> None:
    event = threading.Event()
    while not event.wait(POLL_S):
        if _stalled() is None:
            continue
        with OUTPUT:  # the flow's thread prints nothing from here on
            wait = _stalled()  # again under the lock: the answer may have come meanwhile
            if wait is None:
                continue
            connection, seconds = wait
            err = CardUnresponsiveError.after(connection.name, seconds, connection.waiting_held)
            log.debug("watchdog: %s", err)
            code = exit_code(err)
            try:
                if _handler is not None:
                    code = _handler(str(err))
                else:
                    sys.stdout.flush()
                    print(f"Error: {err}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
