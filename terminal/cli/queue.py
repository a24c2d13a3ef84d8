"""Queue commands: ``sscard queue status|list|retry-dead|upload`` and ``sscard central serve``.

Output and exit codes are documented in docs/central-api.md ("CLI"): ``--json`` on stdout,
diagnostics on stderr, 13 for the local queue, 14 for the central service (project convention).
The queue file and the central URL default to the terminal configuration's, as the counter commands
use them: ``-q``/``--central``, else ``$SSCARD_QUEUE``/``$SSCARD_CENTRAL``, else the configuration
(``--config``, else ``$SSCARD_CONFIG`` or ``~/.config/sscard/terminal.toml`` when that file exists),
else the built-in defaults.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from sscard.apdu.catalogue import CARD_ITEMS
from sscard.message.envelope import MSGID_RE, iso_time
from sscard.terminal.cli import signals
from sscard.terminal.cli.options import LIMIT, Count, FilePath, Seconds, central_option, config_option
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.config import TerminalConfig, configured_queue, find_config, queue_and_central
from sscard.terminal.queue import ALL_STATES, STATES, Outbox

#: the card identification code in hex (16 bytes on the card): what ``--card`` takes besides the card number
CARD_SN_LENGTH = 2 * next(item.length for item in CARD_ITEMS if item.key == "card_identification_code")

#: show the progress bar on a terminal when more records than this are to be sent
PROGRESS_OVER = 500


def queue_path(path: Path | None, config_path: Path | None) -> Path:
    """``-q`` or ``$SSCARD_QUEUE`` (``path``), else the configuration's ``[queue] path``, else
    :func:`terminal.config.default_queue`."""
    return path if path is not None else configured_queue(find_config(config_path))


def queue_options(command: Any) -> Any:
    """``-q`` and ``--config`` for a queue command (the order is in the module's docstring)."""
    command = config_option(command)
    return click.option(
        "--queue", "-q", "path", type=FilePath(dir_okay=False, path_type=Path), envvar="SSCARD_QUEUE",
        default=None,
        show_default="$SSCARD_QUEUE, else the terminal configuration's [queue] path,"
                     " else ~/.local/share/sscard/queue.sqlite",
        help="The terminal's record queue file.",
    )(command)


def msgid_value(value: str) -> str:
    """A record's msgid as ``--msgid`` takes it: 12 institution characters, 14 time digits and 4 sequence
    digits (docs/platform.md, "msgid"); anything else is exit 2, not "no such record"."""
    if not (value.isascii() and MSGID_RE.fullmatch(value)):
        raise click.BadParameter(f"{value[:40]!r} is not a msgid (30 characters: institution code, time, sequence, "
                                 "as 'sscard queue list' shows them)", param_hint="'--msgid'")
    return value


@click.group()
def queue() -> None:
    """The local record queue: registrations and purchases waiting for the central service."""


@queue.command()
@queue_options
@json_option("Print JSON on stdout.")
def status(path: Path | None, config_path: Path | None, as_json: bool) -> None:
    """How many records are in each state, and how long the oldest unsent one has waited (no queue
    file yet, on a fresh install: all zero)."""
    where = queue_path(path, config_path)
    counts: dict[str, int] = {state: 0 for state in STATES}
    oldest = age = None
    if where.exists():  # else nothing was ever queued here: an empty queue, not a damaged one (exit 13)
        with Outbox(where, create=False) as outbox:
            counts, oldest, now = outbox.counts(), outbox.oldest_pending(), outbox.clock()
        age = int((now - oldest).total_seconds()) if oldest else None
    if as_json:
        print_json({**counts, "oldest_pending": iso_time(oldest) if oldest else None,
                   "oldest_pending_age_s": age})
        return
    click.echo("  ".join(f"{name} {count}" for name, count in counts.items()))
    if oldest and age is not None:
        click.echo(f"oldest unsent record made {oldest:%Y-%m-%d %H:%M:%S}, {format_age(age)} ago")
    if counts["dead"]:
        click.echo(f"{counts['dead']} dead records: see 'sscard queue list --state dead', then 'sscard queue retry-dead'",
                   err=True)


def format_age(seconds: int) -> str:
    """``3725`` -> ``1 h 2 min``; under a minute in seconds."""
    if seconds < 60:
        return f"{max(seconds, 0)} s"
    hours, minutes = divmod(seconds // 60, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p) or "0 min"


@queue.command("list")
@queue_options
@click.option("--state", "--status", "state", type=click.Choice(ALL_STATES), default=None,
              help="Only records in this state (held: queued before its card change is done, not uploaded yet).")
@click.option("--card", default=None, metavar="CARD",
              help="Only the records of this card: its card number (as printed on it) or its identification code.")
@click.option("--limit", type=LIMIT, default=50, show_default=True, help="At most this many records, newest first.")
@json_option("Print JSON on stdout.")
def list_records(path: Path | None, config_path: Path | None, state: str | None, card: str | None, limit: int,
                 as_json: bool) -> None:
    """The newest records (card codes masked, no personal data; none when there is no queue file yet)."""
    where = queue_path(path, config_path)
    rows = []
    if where.exists():
        with Outbox(where, create=False) as outbox:
            given = card.strip() if card else None
            by_code = given is not None and len(given) == CARD_SN_LENGTH
            code, number = (given.upper(), None) if given and by_code else (None, given)
            rows = [r.summary() for r in outbox.records(state, limit, card_sn=code, card_number=number, damaged=True)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        flag = (" cross-region" if row["cross_region"] else "") + (" DAMAGED" if row.get("damaged") else "")
        error = f"  ({row['last_error']})" if row["last_error"] else ""
        click.echo(f"{row['msgid']}  {row['infno']}  {row['created_at']}  {row['state']}{flag}{error}")


@queue.command("retry-dead")
@queue_options
@click.option("--msgid", "msgids", multiple=True, metavar="MSGID", callback=lambda _c, _p, v: tuple(map(msgid_value, v)),
              help="Only this dead record (repeat the option for more); default: every dead record.")
@json_option("Print JSON on stdout.")
def retry_dead(path: Path | None, config_path: Path | None, msgids: tuple[str, ...], as_json: bool) -> None:
    """Put dead records back to pending (after the cause was fixed), to be sent by the next upload."""
    with Outbox(queue_path(path, config_path), create=False) as outbox:
        revived = outbox.retry_dead(msgids or None)
    if as_json:
        print_json({"revived": revived})
    else:
        click.echo(f"{revived} dead records put back to pending")


@queue.command()
@queue_options
@central_option
@click.option("--batch-size", type=Count(1, 500), default=None, help="Records per batch [default: 100].")
@click.option("--timeout", type=Seconds(0, 600), default=None,
              help="Seconds each call to the service may take, the whole answer included [default: 10].")
@click.option("--follow", is_flag=True,
              help="Keep running: send records as they become due, until Ctrl-C or SIGTERM.")
@click.option("--interval", type=Seconds(0.05, 86400, low_included=True), default=None,
              help="With --follow: longest sleep between looks for new records [default: 5].")
@click.option("--now", "ignore_schedule", is_flag=True,
              help="Try every pending record now, even those waiting for their retry time.")
@click.option("--progress/--no-progress", default=None,
              help=f"Progress bar on stderr [default: on a terminal, for more than {PROGRESS_OVER} records].")
@json_option("Print JSON on stdout.")
def upload(path: Path | None, config_path: Path | None, central_url: str | None, batch_size: int | None,
           timeout: float | None, follow: bool, interval: float | None, ignore_schedule: bool,
           progress: bool | None, as_json: bool) -> None:
    """Send the due records to the central service (exit 14 if it cannot be reached)."""
    from sscard.terminal.upload import (  # here: httpx slows start-up
        DEFAULT_BATCH,
        DEFAULT_INTERVAL,
        DEFAULT_TIMEOUT,
        CentralError,
        Uploader,
        shown_url,
    )

    path, url, config = queue_and_central(path, central_url, config_path)

    # the configuration's station (a terminal number corrected there applies to the next sign-in)
    station = config.station if config and config.queue_path == path else None
    with Outbox(path, station, create=False) as outbox, \
            Uploader(outbox, url, credentials=gateway_credentials(config, outbox),
                     batch_size=DEFAULT_BATCH if batch_size is None else batch_size,
                     timeout=DEFAULT_TIMEOUT if timeout is None else timeout) as uploader:
        if follow:
            with signals.stop_on_signals() as stop:
                click.echo(f"uploading to {shown_url(url)} until Ctrl-C or SIGTERM", err=True)
                totals = {"sent": 0, "dead": 0}

                def on_report(report: Any) -> None:
                    totals["sent"] += report.sent
                    totals["dead"] += report.dead
                    note = f"  ({report.error})" if report.error else ""
                    click.echo(f"{dt.datetime.now():%H:%M:%S} sent {report.sent}  dead {report.dead}"
                               f"  pending {report.pending}{note}", err=True)

                uploader.follow(stop, interval or DEFAULT_INTERVAL, on_report)
                counts = outbox.counts()
            summary = {**totals, "pending": counts["pending"] + counts["sending"]}
            if as_json:
                print_json(summary)
            else:
                click.echo(f"stopped: sent {summary['sent']}  dead {summary['dead']}  pending {summary['pending']}")
            return
        due = outbox.counts()["pending"]
        show = progress if progress is not None else (sys.stderr.isatty() and due > PROGRESS_OVER)
        if show:
            with click.progressbar(length=due, label=f"uploading {due} records",
                                   file=sys.stderr) as bar:
                report = uploader.drain(ignore_schedule=ignore_schedule, progress=bar.update)
        else:
            report = uploader.drain(ignore_schedule=ignore_schedule)
    error = CentralError(f"{report.error} ({report.pending} pending, next attempt {report.next_attempt})"
                         ) if report.error else None
    if as_json:  # the failure itself as the error object: its code says which (docs/json.md)
        print_json(report.counts(), error=report.failure)
    else:
        click.echo(f"sent {report.sent}  dead {report.dead}  pending {report.pending}")
    if report.dead:
        click.echo(f"{report.dead} records went dead: see 'sscard queue list --state dead'", err=True)
    if error:
        raise error
    if report.pending and report.next_attempt and not as_json:
        click.echo(f"{report.pending} records wait for their retry time (next {report.next_attempt}); "
                   "'--now' sends them at once", err=True)


def gateway_credentials(config: TerminalConfig | None, outbox: Outbox) -> Any:
    """The gateway credentials of the configuration, else the TEST ones of the queue's institution
    (a warning on stderr says so)."""
    from sscard.terminal.gateway import TEST_CREDENTIALS_WARNING, load_credentials

    spec = config.central_credentials if config else "test"
    credentials, test = load_credentials(spec, outbox.require_station().fixmedins_code)
    if test:
        click.echo(TEST_CREDENTIALS_WARNING, err=True)
    return credentials


@queue.command()
@queue_options
@central_option
@json_option("Print JSON on stdout.")
def resolve(path: Path | None, config_path: Path | None, central_url: str | None, as_json: bool) -> None:
    """Resolve the journal's unknown entries: calls whose answer was lost (a timeout, a kill).

    \b
    Each is reversed with a 2601 naming its msgid, never sent again; the platform undoes it, or says
    it never arrived (and then never executes it). Exit 0: nothing left unknown; 17: some are still
    unknown (the platform cannot be asked: try again later).
    """
    from sscard.terminal.online import OutcomeUnknownError, Platform, PlatformRefusedError
    from sscard.terminal.upload import CentralError

    path, url, config = queue_and_central(path, central_url, config_path)
    error = None
    with Outbox(path, create=False) as outbox:
        with Platform(outbox, url, gateway_credentials(config, outbox)) as platform:
            try:
                done = platform.resolve()
            except (CentralError, PlatformRefusedError) as err:
                done, error = [], err
            left = outbox.unknown_calls()
    rows = [{"msgid": r.record.msgid, "infno": r.record.infno, "state": r.state, "text": r.text} for r in done]
    still = OutcomeUnknownError(f"{len(left)} journal entries are still unknown{f' ({error})' if error else ''}: run "
                                "'sscard queue resolve' again when the platform answers.") if left else None
    if as_json:
        print_json({"resolved": rows, "unknown": [r.msgid for r in left]}, error=still)
    else:
        for row in rows:
            click.echo(row["text"])
        if not rows and not left:
            click.echo("Nothing unknown in the journal.")
    if still:
        raise still


@click.group()
def central() -> None:
    """The virtual national medical insurance platform, for development and tests (docs/platform.md)."""


db_option = click.option("--db", type=FilePath(dir_okay=False, path_type=Path), default=Path("central.sqlite"),
                         show_default=True, help="The platform's ledger: persons, accounts, settlements, messages.")


@central.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on: 127.0.0.1 or ::1 (this computer only); another only with --allow-remote.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host other computers reach (0.0.0.0, ::, a LAN address): anyone reaching it may use the"
                   " public TEST credentials. Development only.")
@click.option("--port", type=Count(0, 65535), default=8930, show_default=True)
@click.option("--faults", is_flag=True,
              help="Allow the fault switches (POST /_control, signed): fail, stall, drop, garbage. Development only.")
def serve(db: Path, host: str, allow_remote: bool, port: int, faults: bool) -> None:
    """Run the virtual platform until Ctrl-C or SIGTERM.

    \b
    A new ledger is seeded with the TEST persons and institutions of fixtures/platform/; terminals
    sign their requests with the TEST gateway credentials of their institution by default.
    It listens on this computer only unless --allow-remote; its bounds (body sizes, requests and
    ledger bytes per institution, connections) are in docs/platform.md, "Strangers and oversize requests".
    """
    from sscard.central import CentralService
    from sscard.central.server import HostRefused, is_loopback
    from sscard.terminal.upload import CentralError, ledger_errors

    try:
        with ledger_errors(db):
            service = CentralService(db, host, port, faults=faults, allow_remote=allow_remote)
    except HostRefused as err:
        raise click.BadParameter(str(err), param_hint="--host") from None
    except OSError as err:
        raise CentralError(f"The virtual platform cannot listen on {host}:{port}: {err.strerror or err}") from None
    if not is_loopback(host):
        click.echo(f"warning: the virtual platform listens beyond this computer ({host}, --allow-remote): anyone who"
                   " reaches it may use the public TEST credentials", err=True)
    click.echo(f"virtual platform on {service.url}, ledger {db}{', fault switches on' if faults else ''}", err=True)
    service.serve()
    click.echo("virtual platform stopped", err=True)


@central.command()
@db_option
@click.option("--limit", type=LIMIT, default=None, help="At most this many rows of each kind.")
@json_option("Print JSON on stdout.")
def show(db: Path, limit: int | None, as_json: bool) -> None:
    """What the virtual platform holds: messages by msgid, settlements, accounts, old cards, visits."""
    from sscard.central import Ledger
    from sscard.terminal.upload import CentralError, ledger_errors

    if not db.is_file():
        raise CentralError(f"No virtual platform ledger at {db}")
    with ledger_errors(db):
        ledger = Ledger(db, read_only=True)
    try:
        held = ledger.show(limit)
    finally:
        ledger.close()
    if as_json:
        print_json(held)
        return
    click.echo(f"messages {len(held['messages'])}")
    for m in held["messages"]:
        state = "accepted" if m["infcode"] == 0 else "refused"
        reversed_by = f", reversed by {m['reversed_by']}" if m["reversed_by"] else ""
        click.echo(f"  {m['msgid']}  {m['infno']}  {m['transaction']}  {state}{reversed_by}")
    click.echo(f"settlements {len(held['settlements'])}")
    for s in held["settlements"]:
        click.echo(f"  {s['setl_id']}  sale {s['chrg_bchno']}  {s['medfee_sumamt']}  fund {s['fund_pay_sumamt']}"
                   f"  account {s['acct_pay']}  cash {s['psn_cash_pay']}  {s['state']}")
    click.echo("accounts")
    for a in held["accounts"]:
        click.echo(f"  {a['psn_no']}  {a['psn_name']}  {a['balc']}")
    click.echo("old cards")
    for o in held["old_cards"]:
        click.echo(f"  {o['card_no']}  {o['psn_no']}  {o['balc']}  "
                   f"{'moved ' + str(o['moved_msgid']) if o['moved_msgid'] else 'not moved'}")
    click.echo(f"visits {len(held['visits'])}")
    for v in held["visits"]:
        click.echo(f"  {v['mdtrt_id']}  {v['infno']}  {v['psn_no']}  {v['dept_name']}  {v['state']}")


COMMANDS = [queue, central]
