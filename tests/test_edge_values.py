"""Values checked at the edge (terminal/cli/options.py, terminal/config.py): a bad number, text, file or
environment value is a usage (2) or configuration (12) error with what is wrong, never exit 1, never
a hang, and never ignored."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from queueing import STATION, registration

from sscard.terminal.cli import main
from sscard.terminal.queue import Outbox

LONG = "x" * 5000


@pytest.fixture
def queue_file(tmp_path, monkeypatch):
    path = tmp_path / "queue.sqlite"
    with Outbox(path, STATION) as outbox:
        registration(outbox)
    monkeypatch.setenv("SSCARD_QUEUE", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))
    return path


@pytest.mark.parametrize(("args", "words"), [
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--timeout", "nan"], "'nan' is not a number of seconds"),
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--timeout", "inf"], "not a number of seconds"),
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--timeout", "1e400"], "not in the range"),
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--timeout", "１０"], "not a number of seconds"),
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--follow", "--interval", "inf"], "not a number"),
    (["--card-timeout", "nan", "read"], "'nan' is not a number of seconds"),
    (["--card-timeout", "0", "read"], "not in the range 0 < seconds"),
    (["queue", "list", "--limit", str(2 ** 64)], "not in the range 1<=x<=100000"),
    (["queue", "list", "--limit", "１２"], "is not a whole number (digits 0-9)"),
    (["queue", "upload", "--central", "http://127.0.0.1:9", "--batch-size", "٥"], "is not a whole number"),
    (["queue", "retry-dead", "--msgid", ""], "is not a msgid"),
    (["read", "--reader", "sim:" + LONG], "at most 256"),
    (["read", "--reader", "sim:adult\x00"], "control characters"),
    (["read", "--reader", "sim:adult\u202e"], "control characters"),  # a right-to-left override
    (["watch", "--reader", LONG, "--timeout", "1"], "at most 256"),
    (["watch", "--timeout", "-inf"], "not a number of seconds"),
    (["desk", "register", "--department", " ", "--pin-stdin"], "must not be empty"),
    (["pharmacy", "activate", "--wait", "nan"], "not a number of seconds"),
])
def test_a_bad_value_is_a_usage_error_that_says_what_is_wrong(queue_file, args, words):
    result = CliRunner().invoke(main, args, input="")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert words in result.stderr and "Traceback" not in result.output


def test_an_invalid_environment_value_is_an_error_naming_it(queue_file, monkeypatch):
    monkeypatch.setenv("SSCARD_CARD_TIMEOUT", "abc")
    result = CliRunner().invoke(main, ["read"])
    assert result.exit_code == 2 and "(from $SSCARD_CARD_TIMEOUT)" in result.stderr
    monkeypatch.setenv("SSCARD_CARD_TIMEOUT", "2.5")
    assert CliRunner().invoke(main, ["read", "--json"]).exit_code == 0


@pytest.mark.parametrize("kind", ["fifo", "device", "deep", "huge", "binary"])
def test_a_configuration_that_is_not_one_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "terminal.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    elif kind == "deep":
        path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "huge":
        path.write_text("# " + "x" * 100_000 + "\n")
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    # a process of its own: a FIFO opened for reading would block the test for ever
    run = subprocess.run([str(Path(sys.executable).with_name("sscard")), "desk", "register", "--config", str(path),
                          "--department", "内科", "--pin-stdin"], input="", capture_output=True, text=True, timeout=30)
    assert run.returncode == 12, run.stderr
    assert str(path) in run.stderr and "Traceback" not in run.stderr
