"""``sscard desk register``: the hospital registration desk (terminal/flows/desk.py, docs/flows.md)."""
from __future__ import annotations

from pathlib import Path

import click

from terminal.cli.card import reader_option
from terminal.cli.counter import (
    ScreenClerk,
    central_option,
    config_option,
    finish,
    json_option,
    open_site,
    pin_stdin_option,
)
from terminal.flows.desk import KINDS, register
from terminal.readers import open_connection


@click.group()
def desk() -> None:
    """Hospital registration desk."""


@desk.command("register")
@reader_option
@config_option
@central_option
@click.option("--type", "kind", type=click.Choice(list(KINDS)), prompt="Registration type", default="outpatient",
              show_default=True, help="Outpatient, hospitalisation or maternity registration.")
@click.option("--department", prompt="Department", help="The department the patient is registered with.")
@click.option("--pin/--no-pin", "require_pin", default=None,
              help="Ask the holder's PIN [default: the configuration's desk.require_pin].")
@pin_stdin_option
@json_option
def register_command(reader: str | None, config_path: Path | None, central_url: str | None, kind: str,
                     department: str, require_pin: bool | None, pin_stdin: bool, as_json: bool) -> None:
    """Register the card holder: genuine-card check, PIN, registration queued.

    A card not yet activated is activated by its first registration; a card from another region is
    flagged cross-region. Exit 8: counterfeit card; 6/7: wrong/blocked PIN; 4: card removed.
    """
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)
    with open_site(config_path, central_url) as (config, site), open_connection(reader) as connection:
        pin = config.desk_requires_pin if require_pin is None else require_pin
        result = register(connection, site, kind, department, clerk, require_pin=pin)
    finish(result.to_dict(), as_json)


COMMANDS = [desk]
