"""``sscard desk register|cancel|settle|refund``: the hospital desk (terminal/flows/desk.py, docs/flows.md)."""
from __future__ import annotations

from pathlib import Path

import click

from sscard.terminal.cli.counter import ScreenClerk, bill_items, finish, open_site, pin_stdin_option, yes_option
from sscard.terminal.cli.options import Text, connect, reader_option, site_options
from sscard.terminal.cli.output import json_option
from sscard.terminal.cli.prompts import Asked
from sscard.terminal.flows.desk import KINDS, cancel, refund, register, settle_visit


@click.group()
def desk() -> None:
    """Hospital desk: registration, cancellation, the outpatient bill and its refund, online."""


@desk.command("register")
@reader_option
@site_options
@click.option("--type", "kind", type=click.Choice(list(KINDS)), cls=Asked, prompt="Registration type", default="outpatient",
              show_default=True, help="Outpatient, hospitalisation or maternity registration.")
@click.option("--department", cls=Asked, prompt="Department", type=Text(64), help="The department the patient is registered with.")
@click.option("--pin/--no-pin", "require_pin", default=None,
              help="Ask the holder's PIN [default: the configuration's desk.require_pin].")
@pin_stdin_option
@yes_option
@json_option()
def register_command(reader: str | None, config_path: Path | None, central_url: str | None, kind: str,
                     department: str, require_pin: bool | None, pin_stdin: bool, agrees: bool, as_json: bool) -> None:
    """Register the card holder online: genuine-card check, PIN, 1101, then 2201 or 2401, answered with
    the visit number (mdtrt_id). With the platform unreachable the registration waits in the queue.

    \b
    A card not yet activated is activated by its first registration; a card from another region is
    flagged cross-region; maternity care for a male holder is registered only when the clerk confirms it
    (at the prompt, or --yes), and the confirmation is recorded with it. Exit 8: counterfeit card; 6/7: wrong/blocked PIN; 4: card removed; 15: the
    platform refused (not insured for this kind of visit...); 14/17: its answer was lost and reversed
    (nothing done) or not reversed yet.
    """
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json, agrees=agrees)
    with open_site(config_path, central_url) as (config, site), connect(reader) as connection:
        pin = config.desk_requires_pin if require_pin is None else require_pin
        result = register(connection, site, kind, department, clerk, require_pin=pin)
    finish(result.to_dict(), as_json)


@desk.command("cancel")
@site_options
@click.option("--visit", "mdtrt_id", cls=Asked, prompt="Visit number (mdtrt_id)", help="The visit to cancel, as registered here.")
@json_option()
def cancel_command(config_path: Path | None, central_url: str | None, mdtrt_id: str, as_json: bool) -> None:
    """Cancel a registration or admission made at this terminal (2202 / 2404).

    Exit 15: no such visit here, or the platform refused (a settlement stands on it: refund it first).
    """
    clerk = ScreenClerk(False, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site):
        result = cancel(site, mdtrt_id, clerk)
    finish(result.to_dict(), as_json)


@desk.command("settle")
@reader_option
@site_options
@click.option("--visit", "mdtrt_id", cls=Asked, prompt="Visit number (mdtrt_id)", help="The outpatient visit, as registered here.")
@click.option("--bill", "bill_no", cls=Asked, prompt="Bill number", help="The hospital's charge batch number: a bill is paid once.")
@click.option("--item", "item_specs", multiple=True, metavar="NAME:QTY:PRICE",
              help="A fee item, its quantity and unit price in yuan (repeat for each); asked when absent.")
@pin_stdin_option
@json_option()
def settle_command(reader: str | None, config_path: Path | None, central_url: str | None, mdtrt_id: str,
                   bill_no: str, item_specs: tuple[str, ...], pin_stdin: bool, as_json: bool) -> None:
    """Settle an outpatient bill online: the fee details go up (2204), the platform shows the split
    (2206: fund, medical personal account, cash), the holder types the PIN, the platform settles it
    (2207) and answers the balance.

    \b
    Exit 15: not the visit's card, not an outpatient visit, the visit cancelled; 16: the platform
    refused or the bill was paid with another total; 14/17: as for pharmacy purchase.
    """
    items = bill_items(item_specs, "Fee item", to_stderr=as_json)
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site), connect(reader) as connection:
        result = settle_visit(connection, site, mdtrt_id, bill_no, items, clerk)
    finish(result.to_dict(), as_json)


@desk.command("refund")
@site_options
@click.option("--bill", "bill_no", cls=Asked, prompt="Bill number", help="The bill to refund, as paid here.")
@json_option()
def refund_command(config_path: Path | None, central_url: str | None, bill_no: str, as_json: bool) -> None:
    """Refund an outpatient bill paid at this terminal (2208): the platform gives back exactly what it took.

    Exit 16: no payment of this bill here, or the platform refused.
    """
    clerk = ScreenClerk(False, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site):
        result = refund(site, bill_no, clerk)
    finish(result.to_dict(), as_json)


COMMANDS = [desk]
