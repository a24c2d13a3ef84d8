"""Every command run with garbage in each of its options: never exit 1 (a bug), never a traceback,
never a hang (each run bounded). The values are those an attacker or a slip of the hand gives: not a
number, not finite, out of range, empty, huge, control characters, other scripts' digits, paths to
devices and to files that are not ours. docs/security.md, "Hostile input"."""
from __future__ import annotations

import signal
import time

import click
import pytest
from click.testing import CliRunner
from test_json import SERVERS, commands

from sscard.terminal.cli import main

#: values given to every option that takes one
GARBAGE = ("nan", "inf", "-1", "1e400", str(2 ** 70), "", " ", "x" * 5000, "a\x00b", "١٢٣", "１２",
           "../../../../../../../../etc/passwd", "/dev/zero", "/", "sim:" + "x" * 300, "-")
#: commands that run until stopped, or wait for a card to come, whatever their options
LONG_RUNNING = SERVERS | {"watch"}
#: seconds one run may take (the demo's whole day is the slowest legitimate run)
BOUND_S = 20


class Hang(Exception):
    """A run took longer than BOUND_S."""


def _cases() -> list[tuple[str, str]]:
    cases = []
    for path, command in commands():
        if path in LONG_RUNNING:
            continue
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.count and param.name != "help":
                cases.append((path, param.opts[0]))
    return cases


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Nothing of the user's: a fresh home and working folder, no configuration, a platform that is
    not there (refused at once)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("SSCARD_CENTRAL", "http://127.0.0.1:9")
    for name in ("SSCARD_CONFIG", "SSCARD_QUEUE", "SSCARD_READER", "SSCARD_PSAM", "SSCARD_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)

    def hang(*_: object) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, hang)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(("path", "option"), _cases())
def test_garbage_in_any_option_is_a_clear_error_or_a_clean_run(isolated, path, option):
    runner = CliRunner()
    for value in GARBAGE:
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, BOUND_S)
        try:
            result = runner.invoke(main, [*path.split(), option, value], input="")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        said = f"{path} {option} {value[:20]!r}: exit {result.exit_code} after {time.monotonic() - started:.1f} s\n"
        assert not isinstance(result.exception, Hang), said
        assert result.exit_code != 1, said + result.output[-600:]
        assert "Traceback" not in result.output, said + result.output[-600:]
        assert result.exception is None or isinstance(result.exception, SystemExit), said + repr(result.exception)


#: the environment variables the terminal reads, and commands that read each
ENVIRONMENT = {
    "SSCARD_READER": ["read", "auth"], "SSCARD_QUEUE": ["queue status", "queue list"],
    "SSCARD_CENTRAL": ["queue upload --now", "desk cancel --visit V1"], "SSCARD_CONFIG": ["kiosk", "queue status"],
    "SSCARD_PSAM": ["auth"], "SSCARD_KEY_FILE": ["auth"], "SSCARD_CARD_TIMEOUT": ["read"],
    "SSCARD_JOURNAL_KEY": ["queue status"], "SSCARD_SIM_STATE": ["read", "verify-pin --pin-stdin"],
}


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_garbage_in_any_environment_variable_is_a_clear_error_or_a_clean_run(isolated, tmp_path, monkeypatch, name):
    (tmp_path / "queue.sqlite").write_bytes(b"")  # a queue that is there, for the commands that need one
    for value in (v for v in GARBAGE if "\x00" not in v):  # the environment cannot hold a NUL
        monkeypatch.setenv(name, value)
        for command in ENVIRONMENT[name]:
            signal.setitimer(signal.ITIMER_REAL, BOUND_S)
            try:
                result = CliRunner().invoke(main, command.split(), input="246810\n")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            said = f"${name}={value[:20]!r} {command}: exit {result.exit_code}\n"
            assert not isinstance(result.exception, Hang), said
            assert result.exit_code != 1 and "Traceback" not in result.output, said + result.output[-600:]
