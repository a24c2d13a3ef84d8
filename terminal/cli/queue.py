"""Queue commands: ``sscard queue status|list|upload`` and ``sscard central`` (docs/central-api.md)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import click

from terminal.queue import STATUSES, Outbox

DEFAULT_CENTRAL = "http://127.0.0.1:8930"


def default_queue() -> Path:
    """``$XDG_DATA_HOME/sscard/queue.sqlite`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sscard" / "queue.sqlite"


queue_option = click.option(
    "--queue", "-q", "path", type=click.Path(dir_okay=False, path_type=Path), envvar="SSCARD_QUEUE",
    default=default_queue, show_default="$SSCARD_QUEUE, else ~/.local/share/sscard/queue.sqlite",
    help="The terminal's record queue file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


@click.group()
def queue() -> None:
    """The local record queue: registrations and purchases waiting for the central service."""


@queue.command()
@queue_option
@json_option
def status(path: Path, as_json: bool) -> None:
    """How many records are pending, sent and rejected, and since when records wait."""
    with Outbox(path, create=False) as outbox:
        counts, oldest = outbox.counts(), outbox.oldest_pending()
    if as_json:
        click.echo(json.dumps({**counts, "oldest_pending": oldest.isoformat(sep=" ") if oldest else None}))
        return
    click.echo("  ".join(f"{name} {count}" for name, count in counts.items()))
    if oldest:
        click.echo(f"oldest pending record made {oldest:%Y-%m-%d %H:%M:%S}")


@queue.command("list")
@queue_option
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only records in this state.")
@click.option("--card", "card_sn", default=None, metavar="CODE", help="Only the records of this card identification code.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
def list_records(path: Path, status: str | None, card_sn: str | None, limit: int, as_json: bool) -> None:
    """The newest records (card codes masked, no personal data)."""
    with Outbox(path, create=False) as outbox:
        rows = [r.summary() for r in outbox.records(status, limit, card_sn)]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        flag = " cross-region" if row["cross_region"] else ""
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        click.echo(f"{row['msgid']}  {row['infno']}  {row['created_at']}  {row['status']}{flag}{error}")


@queue.command()
@queue_option
@click.option("--central", "url", envvar="SSCARD_CENTRAL", default=DEFAULT_CENTRAL, show_default=True,
              help="The central service's URL ($SSCARD_CENTRAL).")
@click.option("--batch-size", type=click.IntRange(1, 500), default=None, help="Records per batch [default: 100].")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds to wait for each answer [default: 10].")
@json_option
def upload(path: Path, url: str, batch_size: int | None, timeout: float | None, as_json: bool) -> None:
    """Send the pending records to the central service now (exit 14 if it cannot be reached)."""
    from terminal.upload import CentralError, Uploader  # here: httpx would slow every command's start-up

    given = {"batch_size": batch_size, "timeout": timeout}
    options = {name: value for name, value in given.items() if value is not None}
    with Outbox(path, create=False) as outbox, Uploader(outbox, url, **options) as uploader:
        report = uploader.drain()
    if as_json:
        click.echo(json.dumps(asdict(report)))
    else:
        click.echo(f"sent {report.sent}  rejected {report.rejected}  pending {report.pending}")
    if report.rejected:
        click.echo(f"{report.rejected} records were rejected: see 'sscard queue list --status rejected'", err=True)
    if report.error:
        raise CentralError(f"{report.error} ({report.pending} pending)")


@click.command()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=Path("central.sqlite"),
              show_default=True, help="Where the service keeps every message it answered.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8930, show_default=True)
def central(db: Path, host: str, port: int) -> None:
    """Run the reference central service (development and tests) until Ctrl-C."""
    from terminal.central import CentralService

    service = CentralService(db, host, port)
    click.echo(f"central service on {service.url}, ledger {db}", err=True)
    service.serve_forever()


COMMANDS = [queue, central]
