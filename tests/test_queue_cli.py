"""``sscard queue`` and ``sscard central``: output, exit codes, and the service as a separate process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from queueing import CARD, central, clock, free_port, outbox, registration  # noqa: F401

from terminal.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_status_counts_each_state_and_the_oldest_pending(outbox):
    registration(outbox)
    registration(outbox)
    result = run("queue", "status", "--queue", str(outbox.path), "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert {k: v for k, v in status.items() if k != "oldest_pending_age_s"} == {
        "pending": 2, "sending": 0, "sent": 0, "dead": 0, "oldest_pending": "2026-03-01 09:30:00+08:00"}
    assert status["oldest_pending_age_s"] > 0  # the fixture's records are from 2026-03-01, read with the real clock
    text = run("queue", "status", "--queue", str(outbox.path)).stdout
    assert "pending 2  sending 0  sent 0  dead 0" in text and "2026-03-01 09:30:00" in text and " ago" in text


def test_status_of_a_missing_queue_is_exit_13_without_creating_it(tmp_path):
    path = tmp_path / "none.sqlite"
    result = run("queue", "status", "--queue", str(path))
    assert result.exit_code == 13
    assert "No record queue" in result.stderr and not path.exists()


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
    assert json.loads(result.stdout) == {"sent": 3, "dead": 0, "pending": 0, "batches": 1, "error": None, "next_attempt": None}


def test_upload_to_an_unreachable_service_is_exit_14_and_keeps_the_records(outbox):
    registration(outbox)
    result = run("queue", "upload", "-q", str(outbox.path), "--central", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.exit_code == 14
    assert "unreachable" in result.stderr and "1 pending" in result.stderr
    assert "Traceback" not in result.output
    assert outbox.counts()["pending"] == 1


@pytest.mark.skipif(shutil.which("sscard", path=os.path.dirname(sys.executable)) is None, reason="sscard not installed")
def test_the_service_in_its_own_process_takes_uploads_from_the_cli(outbox, tmp_path):
    port = free_port()
    sscard = shutil.which("sscard", path=os.path.dirname(sys.executable))
    service = subprocess.Popen(
        [sscard, "central", "serve", "--port", str(port), "--db", str(tmp_path / "central.sqlite")],
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
        httpx.post(url + "/_control", json={"mode": "fail", "count": 1})
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
    assert Path(tmp_path / "central.sqlite").exists()


def test_upload_help_states_the_uploaders_own_defaults():
    from terminal.upload import DEFAULT_BATCH, DEFAULT_TIMEOUT

    text = " ".join(run("queue", "upload", "--help").stdout.split())
    assert f"[default: {DEFAULT_BATCH}]" in text and f"[default: {DEFAULT_TIMEOUT:g}]" in text
