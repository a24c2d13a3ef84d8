"""Stopping on signals (terminal/cli/signals.py): a handler only sets a flag, so a signal at any
moment of a wait ends it, and never deadlocks as ``threading.Event.set`` in a handler can."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from queueing import central, clock, outbox, registration  # noqa: F401  (fixtures)

from sscard.terminal.cli.signals import Flag, on_signals


def test_a_flag_set_by_a_signal_during_its_wait_ends_the_wait_at_once():
    rng = random.Random(7)
    for _ in range(200):
        flag = Flag()
        with on_signals({signal.SIGALRM: flag}):
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0005, 0.01))  # any moment of the wait
            started = time.monotonic()
            assert flag.wait(5) is True
            assert time.monotonic() - started < 0.5
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)  # the previous handler is back


def test_a_flag_wait_times_out_unset():
    started = time.monotonic()
    assert Flag().wait(0.2) is False and 0.15 < time.monotonic() - started < 1


def sigterm_storm(start, seed: int, latest_s: float) -> None:
    """10 rounds of 5 processes from ``start(n)``, each sent SIGTERM (sometimes twice) at a random
    moment up to ``latest_s`` after the previous one: every one must end within 5 s, cleanly."""
    rng = random.Random(seed)
    for round_ in range(10):
        processes = [start(5 * round_ + i) for i in range(5)]
        try:
            for process in processes:
                time.sleep(rng.uniform(0.0, latest_s))
                process.send_signal(signal.SIGTERM)
                if rng.random() < 0.3:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                _, err = process.communicate(timeout=5)  # TimeoutExpired: a hang
                assert process.returncode in (0, -signal.SIGTERM), err  # -15: before the handler was set
                assert "Traceback" not in err
        finally:
            for process in processes:
                process.kill()


def sscard(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_upload_follow_stops_within_seconds_on_sigterm_at_any_moment(outbox, central):
    """50 followers, SIGTERM at random moments from start-up to the wait between passes: every one
    ends within 5 s (the handler never blocks on a lock the loop holds)."""
    registration(outbox)
    sigterm_storm(lambda _n: sscard("queue", "upload", "-q", str(outbox.path), "--central", central.url, "--follow",
                                    "--interval", "0.05"), seed=2026, latest_s=0.3)


def test_central_serve_stops_within_seconds_on_sigterm_at_any_moment(tmp_path):
    """50 virtual platforms, SIGTERM at random moments from start-up to serving: every one ends within
    5 s (uvicorn's handlers set a flag its loop reads), its ledger closed."""
    sigterm_storm(lambda n: sscard("central", "serve", "--db", str(tmp_path / f"ledger-{n}.sqlite"), "--port", "0"),
                  seed=2027, latest_s=0.4)
