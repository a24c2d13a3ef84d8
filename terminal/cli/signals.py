"""Stopping a long-running command cleanly on Ctrl-C (SIGINT) or SIGTERM.

A Python signal handler runs on the main thread, between two bytecodes of whatever it was doing. A
:class:`threading.Event` must not be set there: ``Event.set`` takes the lock of the Condition that
``Event.wait``, on that same main thread, may hold at that moment, and the process deadlocks (seen:
``sscard queue upload --follow`` hung for good on SIGTERM, every later signal nesting one more
handler on the lock). :class:`Flag` is set with a plain assignment, which is safe anywhere; its
:meth:`Flag.wait` sleeps in short steps (``time.sleep`` resumes after a handler ran, PEP 475).
"""
from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

#: how often :meth:`Flag.wait` looks at the flag (the longest a stop waits to be noticed)
POLL_S = 0.05


class Flag:
    """A flag a signal handler may set (module docstring); ``wait`` and ``is_set`` as an Event's."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_S, left))
        return True


@contextlib.contextmanager
def on_signals(flags: dict[signal.Signals, Flag]) -> Iterator[None]:
    """Each signal sets its flag instead of its default action (Ctrl-C's KeyboardInterrupt, SIGTERM's
    end); the previous handlers come back afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in flags}
    try:
        for sig, flag in flags.items():
            signal.signal(sig, lambda *_, flag=flag: flag.set())
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Flag]:
    """A flag set by Ctrl-C (SIGINT) or SIGTERM instead of killing the process, so a loop can end
    cleanly after the work in hand."""
    stop = Flag()
    with on_signals({signal.SIGINT: stop, signal.SIGTERM: stop}):
        yield stop
