"""``sscard kiosk``: the self-service inquiry (terminal/flows/kiosk.py, docs/flows.md)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from sscard.message.envelope import yuan
from sscard.terminal.cli.counter import ScreenClerk, finish, open_site, pin_stdin_option
from sscard.terminal.cli.options import LIMIT, connect, reader_option, site_options
from sscard.terminal.cli.output import json_option
from sscard.terminal.flows.kiosk import RECORDS_SHOWN, KioskView, inquiry

LABELS = (("full_name", "Name"), ("social_security_number", "ID number"), ("card_number", "Card number"),
          ("sex_name", "Sex"), ("birth_date", "Birth date"), ("issuing_region", "Issuing region"),
          ("expiry_date", "Card expiry"))


def kiosk_text(view: KioskView) -> list[str]:
    """The kiosk screen as text lines."""
    lines = [f"{label + ':':16}{view.shown[key] or '-'}" for key, label in LABELS]
    lines.append(f"{'Card state:':16}{'active' if view.activated else 'NOT ACTIVATED'}")
    balance = f"{yuan(view.balance_fen)} yuan" if view.balance_fen is not None else "not known"
    lines.append(f"{'Account:':16}{balance} ({view.balance_note})")
    lines.append(f"Records at this terminal: {view.records_total}" +
                 (f" (the newest {len(view.records)}; --limit shows more)" if view.records_total > len(view.records) else ""))
    for r in view.records:
        extra = "".join(f"  {r[k]}" for k in ("department", "amount") if k in r)
        flag = "  cross-region" if r["cross_region"] else ""
        when = dt.datetime.fromisoformat(r["time"])
        lines.append(f"  {when:%Y-%m-%d %H:%M}  {r['what']}{extra}{flag}  ({r['state']})")
    return lines


@click.command()
@reader_option
@site_options
@pin_stdin_option
@click.option("--limit", type=LIMIT, default=RECORDS_SHOWN, show_default=True,
              help="Show at most this many records, the newest first.")
@json_option()
def kiosk(reader: str | None, config_path: Path | None, central_url: str | None, pin_stdin: bool, limit: int,
          as_json: bool) -> None:
    """Self-service inquiry: the holder's information and records (PIN required; data masked)."""
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site), connect(reader) as connection:
        view = inquiry(connection, site, clerk, limit)
    finish(view.to_dict(), as_json, kiosk_text(view))


COMMANDS = [kiosk]
