"""``sscard bank activate``: activation at a bank counter (terminal/flows/bank.py, docs/flows.md)."""
from __future__ import annotations

from pathlib import Path

import click

from sscard.drivers.errors import CardUnresponsiveError
from sscard.terminal.cli import watchdog
from sscard.terminal.cli.counter import ScreenClerk, finish, open_site, pin_stdin_option
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.cli.options import connect, id_number_asked, reader_option, site_options
from sscard.terminal.cli.output import json_option
from sscard.terminal.flows.bank import bank_activate
from sscard.terminal.queue import QueuedRecord


@click.group()
def bank() -> None:
    """Bank counter."""


@bank.command("activate")
@reader_option
@site_options
@id_number_asked
@pin_stdin_option
@json_option()
def activate(reader: str | None, config_path: Path | None, central_url: str | None, id_number: str, pin_stdin: bool,
             as_json: bool) -> None:
    """Activate a card: the ID document must match the card, the holder sets a PIN (typed twice).

    The ID document number is typed at the prompt (asked again when mistyped), or read as the first
    line of standard input, never from the command line.

    Exit 9: the ID document does not match; 11: weak or mismatched PIN; 15: already activated;
    8: counterfeit card or wrong keys. A run interrupted after the card was changed is finished by
    the next run with the same card (the activation recorded, exit 0).
    """
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)

    def before_change(held: QueuedRecord) -> None:
        def report(reason: str) -> int:
            # the card may or may not have taken the change: the held record is settled by the next run
            with watchdog.OUTPUT:
                click.echo(f"Error: {reason}. The activation is not finished: its record {held.msgid} is held in "
                           "the queue (not sent). Put the card in again and run 'sscard bank activate' again: it "
                           "records the activation if the card was changed, or starts it again.", err=True)
            return exit_code(CardUnresponsiveError)

        watchdog.on_timeout(report)

    try:
        with open_site(config_path, central_url) as (_config, site), connect(reader) as connection:
            result = bank_activate(connection, site, id_number, clerk, before_change=before_change)
    finally:
        watchdog.on_timeout(None)
    finish(result.to_dict(), as_json)


COMMANDS = [bank]
