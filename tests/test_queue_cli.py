"""``sscard queue`` and ``sscard central``: output, exit codes, and the service as a separate process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from queueing import (  # noqa: F401
    CARD,
    ScriptedService,
    as_unprivileged,
    central,
    clock,
    free_port,
    http_reply,
    outbox,
    purchase,
    read_only,
    registration,
    signed,
)

from sscard.terminal.cli import main
from sscard.terminal.queue import Outcome


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_status_counts_each_state_and_the_oldest_pending(outbox):
    registration(outbox)
    registration(outbox)
    result = run("queue", "status", "--queue", str(outbox.path), "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert {k: v for k, v in status.items() if k != "oldest_pending_age_s"} == {
        "pending": 2, "sending": 0, "sent": 0, "dead": 0, "oldest_pending": "2026-03-01T09:30:00+08:00"}
    assert status["oldest_pending_age_s"] > 0  # the fixture's records are from 2026-03-01, read with the real clock
    text = run("queue", "status", "--queue", str(outbox.path)).stdout
    assert "pending 2  sending 0  sent 0  dead 0" in text and "2026-03-01 09:30:00" in text and " ago" in text


def test_a_fresh_install_has_an_empty_queue_not_a_damaged_one(tmp_path):
    path = tmp_path / "none.sqlite"
    status = run("queue", "status", "--queue", str(path), "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout) == {"pending": 0, "sending": 0, "sent": 0, "dead": 0, "oldest_pending": None,
                                         "oldest_pending_age_s": None}
    listed = run("queue", "list", "--queue", str(path), "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == [] and not path.exists()  # nothing created
    assert run("queue", "retry-dead", "--queue", str(path)).exit_code == 13  # a change needs the queue


def test_list_masks_the_card_and_filters_by_card_and_state(outbox):
    mine = registration(outbox, insured_region="310101")
    registration(outbox, card_sn=None)
    rows = json.loads(run("queue", "list", "-q", str(outbox.path), "--card", CARD, "--json").stdout)
    assert [r["msgid"] for r in rows] == [mine.msgid]
    assert rows[0]["cross_region"] is True and CARD not in json.dumps(rows)
    assert len(json.loads(run("queue", "list", "-q", str(outbox.path), "--state", "pending", "--json").stdout)) == 2
    assert json.loads(run("queue", "list", "-q", str(outbox.path), "--status", "sent", "--json").stdout) == []
    assert f"{mine.msgid}  2201" in run("queue", "list", "-q", str(outbox.path)).stdout


def test_upload_sends_everything_and_reports_it(outbox, central):
    for _ in range(3):
        registration(outbox)
    result = run("queue", "upload", "-q", str(outbox.path), "--central", central.url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sent": 3, "dead": 0, "pending": 0, "batches": 1, "next_attempt": None}


def test_upload_to_an_unreachable_service_is_exit_14_and_keeps_the_records(outbox):
    registration(outbox)
    result = run("queue", "upload", "-q", str(outbox.path), "--central", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.exit_code == 14
    assert "unreachable" in result.stderr and "1 pending" in result.stderr
    assert "Traceback" not in result.output
    assert outbox.counts()["pending"] == 1
    with_json = run("queue", "upload", "-q", str(outbox.path), "--central", f"http://127.0.0.1:{free_port()}",
                    "--timeout", "2", "--now", "--json")
    report = json.loads(with_json.stdout)  # one document: what was done, and the error beside it
    assert with_json.exit_code == 14 and (report["sent"], report["pending"]) == (0, 1)
    assert report["error"]["code"] == "central_unavailable" and "unreachable" in report["error"]["message"]


def test_the_service_in_its_own_process_takes_uploads_from_the_cli(outbox, tmp_path):
    port = free_port()
    sscard = shutil.which("sscard", path=os.path.dirname(sys.executable))
    assert sscard, "the sscard console script is not installed next to this Python"
    service = subprocess.Popen(
        [sscard, "central", "serve", "--port", str(port), "--db", str(tmp_path / "central.sqlite"), "--faults"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/_stats")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or service.poll() is not None:
                    pytest.fail(f"sscard central did not start: {service.stderr.read() if service.poll() is not None else ''}")
                time.sleep(0.1)
        registration(outbox)
        assert httpx.post(url + "/_control", json={"mode": "fail", "count": 1}, headers=signed()).status_code == 200
        failed = subprocess.run([sscard, "queue", "upload", "-q", str(outbox.path), "--central", url], capture_output=True, text=True)
        assert failed.returncode == 14 and "HTTP 503" in failed.stderr
        waiting = subprocess.run([sscard, "queue", "upload", "-q", str(outbox.path), "--central", url],
                                 capture_output=True, text=True)
        if "sent 1" not in waiting.stdout:  # full jitter may have drawn a wait under the time between the runs
            assert waiting.returncode == 0 and "wait for their retry time" in waiting.stderr  # the backoff, from the file
            done = subprocess.run([sscard, "queue", "upload", "-q", str(outbox.path), "--central", url, "--now"],
                                  capture_output=True, text=True)
            assert done.returncode == 0 and "sent 1" in done.stdout
        assert httpx.get(url + "/_stats").json()["messages"] == 2  # the record and the sign-in
    finally:
        service.terminate()
        service.wait(timeout=10)
    assert service.returncode == 0 and "virtual platform stopped" in service.stderr.read()  # SIGTERM: a clean stop
    assert Path(tmp_path / "central.sqlite").exists()


def test_upload_help_states_the_uploaders_own_defaults():
    from sscard.terminal.upload import DEFAULT_BATCH, DEFAULT_TIMEOUT

    text = " ".join(run("queue", "upload", "--help").stdout.split())
    assert f"[default: {DEFAULT_BATCH}]" in text and f"[default: {DEFAULT_TIMEOUT:g}]" in text


def dead_records(outbox, count: int) -> list[str]:
    """``count`` records made dead as the central service refuses them (its answer written here)."""
    ids = [registration(outbox).msgid for _ in range(count)]
    outbox.claim(count, lease=60)
    outbox.settle([Outcome(m, -1, "amount '23.5' is not yuan with two decimals") for m in ids])
    return ids


def test_retry_dead_puts_dead_records_back_all_or_by_msgid(outbox):
    first, second, third = dead_records(outbox, 3)
    one = run("queue", "retry-dead", "-q", str(outbox.path), "--msgid", first, "--json")
    assert one.exit_code == 0 and json.loads(one.stdout) == {"revived": 1}
    assert outbox.get(first).state == "pending" and outbox.get(second).state == "dead"
    wrong = run("queue", "retry-dead", "-q", str(outbox.path), "--msgid", first, "--msgid", second)
    assert wrong.exit_code == 13 and first in wrong.stderr and "Traceback" not in wrong.output
    assert outbox.get(second).state == "dead"  # all or nothing
    rest = run("queue", "retry-dead", "-q", str(outbox.path))
    assert rest.exit_code == 0 and "2 dead records put back to pending" in rest.stdout
    assert outbox.counts()["dead"] == 0 and outbox.counts()["pending"] == 3
    assert "dead" not in run("queue", "status", "-q", str(outbox.path)).stderr


def test_status_points_the_clerk_at_dead_records(outbox):
    dead_records(outbox, 2)
    result = run("queue", "status", "-q", str(outbox.path))
    assert "dead 2" in result.stdout and "sscard queue retry-dead" in result.stderr
    rows = json.loads(run("queue", "list", "-q", str(outbox.path), "--state", "dead", "--json").stdout)
    assert len(rows) == 2 and all("two decimals" in r["last_error"] and r["next_attempt"] is None for r in rows)


def sscard(*args: str, **options) -> subprocess.CompletedProcess:
    """The CLI in its own process (no reliance on the console script being installed)."""
    return subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')", *args],
                          capture_output=True, text=True, timeout=60, **options)


@pytest.mark.parametrize("command", [("retry-dead",), ("upload", "--central", "http://127.0.0.1:9")])
def test_a_read_only_queue_is_exit_13_in_clerks_words(outbox, command):
    registration(outbox)
    outbox.close()
    with read_only(outbox.path):
        result = sscard("queue", *command, "-q", str(outbox.path), preexec_fn=as_unprivileged)
    assert result.returncode == 13, result.stderr
    assert str(outbox.path) in result.stderr and ("read-only" in result.stderr or "permissions" in result.stderr)
    assert "Traceback" not in result.stderr and CARD not in result.stderr


def test_upload_can_show_a_progress_bar_on_stderr(outbox, central):
    for _ in range(3):
        registration(outbox)
    result = run("queue", "upload", "-q", str(outbox.path), "--central", central.url, "--progress", "--batch-size", "1")
    assert result.exit_code == 0, result.stderr
    assert "uploading 3 records" in result.stderr and "sent 3" in result.stdout
    assert "uploading" not in run("queue", "upload", "-q", str(outbox.path), "--central", central.url).stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_upload_follow_sends_records_as_they_come_and_stops_cleanly(outbox, central, stop_signal):
    for _ in range(3):
        registration(outbox)
    follower = subprocess.Popen(
        [sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')", "queue", "upload",
         "-q", str(outbox.path), "--central", central.url, "--follow", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def wait_for_sent(count: int) -> None:
        deadline = time.monotonic() + 20
        while outbox.counts()["sent"] < count:
            if time.monotonic() > deadline or follower.poll() is not None:
                follower.kill()
                pytest.fail(f"--follow did not send {count}: {follower.communicate()}")
            time.sleep(0.05)

    try:
        wait_for_sent(3)
        registration(outbox)  # the desk goes on while the uploader runs
        registration(outbox)
        wait_for_sent(5)
        follower.send_signal(stop_signal)
        out, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "stopped: sent 5  dead 0  pending 0" in out
    assert "Traceback" not in err and "Interrupted" not in err
    assert central.ledger.count() == 6  # five records and one sign-in


def test_list_and_upload_read_a_retry_time_of_years_without_an_internal_error(outbox, central):
    """A Retry-After of years stored by an older uploader: listed, and the upload says it waits."""
    registration(outbox)
    outbox.db.execute("UPDATE records SET next_attempt_at = 1e12")
    listed = run("queue", "list", "-q", str(outbox.path), "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["next_attempt"] == "9999-12-31T23:59:59+08:00"
    waiting = run("queue", "upload", "-q", str(outbox.path), "--central", central.url)
    assert waiting.exit_code == 0, waiting.output
    assert "sent 0  dead 0  pending 1" in waiting.stdout and "next 9999-12-31" in waiting.stderr
    sent = run("queue", "upload", "-q", str(outbox.path), "--central", central.url, "--now")
    assert sent.exit_code == 0 and "sent 1" in sent.stdout


def test_upload_after_a_sign_in_answered_in_the_wrong_shape_is_exit_14(outbox):
    registration(outbox)
    with ScriptedService(lambda path, body: http_reply({"infcode": 0, "output": "oops"})) as service:
        result = run("queue", "upload", "-q", str(outbox.path), "--central", service.url)
    assert result.exit_code == 14, result.output
    assert "sent no sign_no" in result.stderr and "Internal error" not in result.stderr
    assert outbox.counts()["pending"] == 1


def test_upload_timeout_bounds_the_whole_call_against_a_service_trickling_its_answer(outbox):
    registration(outbox)
    answer = http_reply({"infcode": 0, "output": {"signinoutb": {"sign_no": "S1"}}})
    with ScriptedService(lambda path, body: answer, per_byte=0.05) as service:
        start = time.monotonic()
        result = run("queue", "upload", "-q", str(outbox.path), "--central", service.url, "--timeout", "1")
        elapsed = time.monotonic() - start
    assert result.exit_code == 14 and "did not answer within 1 s" in result.stderr, result.output
    assert elapsed < 2.5 and outbox.counts()["pending"] == 1


@pytest.mark.parametrize("content", [b"\x00\xff not a database " * 300, b"SQLite format 3\x00" + b"\xff" * 4080])
def test_central_serve_on_a_damaged_ledger_is_exit_14_in_plain_words(tmp_path, content):
    ledger = tmp_path / "central.sqlite"
    ledger.write_bytes(content)
    result = sscard("central", "serve", "--db", str(ledger), "--port", "0")
    assert result.returncode == 14, result.stderr
    assert f"ledger {ledger} cannot be used" in result.stderr and "damaged" in result.stderr
    assert "Internal error" not in result.stderr and "Traceback" not in result.stderr


def test_central_serve_on_a_busy_port_is_exit_14(central, tmp_path):
    port = central.url.rsplit(":", 1)[1]
    result = sscard("central", "serve", "--db", str(tmp_path / "second.sqlite"), "--port", port)
    assert result.returncode == 14 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr


def counter_site(tmp_path, central_url: str) -> Path:
    """A clinic's terminal configuration (tests/flowing.py) whose [central] url is ``central_url``."""
    from flowing import write_config

    config = write_config(tmp_path / "clinic", require_pin=False)
    config.write_text(config.read_text(encoding="utf-8").replace('"http://127.0.0.1:9"', f'"{central_url}"'),
                      encoding="utf-8")
    return config


def test_the_queue_commands_find_the_counters_records_through_the_terminal_configuration(tmp_path, central):
    config = counter_site(tmp_path, central.url)
    env = {"SSCARD_CONFIG": str(config), "SSCARD_QUEUE": None, "SSCARD_CENTRAL": None}
    runner = CliRunner()
    # the bank activation's SS01 is an agency record: it waits in the queue (the desk now asks online)
    desk = runner.invoke(main, ["bank", "activate", "-r", "sim:not-activated", "--pin-stdin", "--json"],
                         input="330302199203081020\n135792\n135792\n", env=env)
    assert desk.exit_code == 0, desk.output
    msgid = json.loads(desk.stdout)["msgid"]
    status = runner.invoke(main, ["queue", "status", "--json"], env=env)  # no -q
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["pending"] == 1
    upload = runner.invoke(main, ["queue", "upload", "--json"], env=env)  # no -q, no --central
    assert upload.exit_code == 0, upload.output
    assert json.loads(upload.stdout)["sent"] == 1
    assert central.ledger.message(msgid)["infno"] == "SS01"
    listed = runner.invoke(main, ["queue", "list", "--state", "sent", "--json"], env=env)
    assert [r["msgid"] for r in json.loads(listed.stdout)] == [msgid]


def test_explicit_options_and_the_environment_still_win_over_the_configuration(tmp_path, outbox, central):
    config = counter_site(tmp_path, f"http://127.0.0.1:{free_port()}")  # its central is down, its queue empty
    registration(outbox)
    base = {"SSCARD_CONFIG": str(config), "SSCARD_QUEUE": None, "SSCARD_CENTRAL": None}
    by_env = run_env({**base, "SSCARD_QUEUE": str(outbox.path)}, "queue", "status", "--json")
    assert by_env.exit_code == 0 and json.loads(by_env.stdout)["pending"] == 1, by_env.output
    from_config = run_env(base, "queue", "upload", "-q", str(outbox.path), "--timeout", "1")
    assert from_config.exit_code == 14 and "unreachable" in from_config.stderr  # the configuration's URL
    sent = run_env({**base, "SSCARD_CENTRAL": central.url}, "queue", "upload", "-q", str(outbox.path), "--now")
    assert sent.exit_code == 0 and "sent 1" in sent.stdout, sent.output
    missing = run_env(base, "queue", "status", "--config", str(tmp_path / "none.toml"))
    assert missing.exit_code == 12 and "No terminal configuration" in missing.stderr


def test_without_a_configuration_the_built_in_defaults_apply(tmp_path):
    env = {"SSCARD_CONFIG": str(tmp_path / "none.toml"), "SSCARD_QUEUE": None, "XDG_DATA_HOME": str(tmp_path)}
    result = run_env(env, "queue", "retry-dead")  # a change needs the queue: its absence names the path
    assert result.exit_code == 13 and str(tmp_path / "sscard" / "queue.sqlite") in result.stderr
    assert run_env(env, "queue", "status").exit_code == 0  # none yet: an empty queue


def run_env(env: dict, *args: str):
    return CliRunner().invoke(main, list(args), env=env)
