"""``sscard pharmacy activate|purchase|refund``: the pharmacy counter (terminal/flows/pharmacy.py, docs/flows.md)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from sscard.drivers.connection import Connection
from sscard.drivers.errors import NoCardError
from sscard.terminal.cli import watchdog
from sscard.terminal.cli.counter import ScreenClerk, bill_items, finish, open_site, pin_stdin_option
from sscard.terminal.cli.options import Seconds, connect, reader_option, site_options
from sscard.terminal.cli.output import json_option
from sscard.terminal.cli.prompts import Asked
from sscard.terminal.flows.common import Site
from sscard.terminal.flows.pharmacy import (
    DualCardActivation,
    dual_card_activate,
    not_answering_note,
    purchase,
    read_old_card,
    refund,
)
from sscard.terminal.readers import SIM_PREFIX, default_reader

#: how long the one-reader dual-card insert waits for the clerk to swap the cards (seconds)
SWAP_TIMEOUT = 60.0


def wait_for_swap(spec: str, timeout: float) -> None:
    """Wait until the card in the PC/SC reader ``spec`` is taken out and another is put in."""
    from sscard.drivers import pcsc

    with pcsc.Context() as context:
        name = pcsc.resolve(spec, context)
    deadline, removed = time.monotonic() + timeout, False
    for event in pcsc.watch(poll_s=0.2):
        if time.monotonic() > deadline:
            raise NoCardError(f"No new card was put in {name} within {timeout:.0f} s. Nothing was recorded.")
        if event.reader != name:
            continue
        if event.kind == pcsc.REMOVED:
            removed = True
        elif event.kind in (pcsc.INSERTED, pcsc.PRESENT) and removed:
            return


@click.group()
def pharmacy() -> None:
    """Pharmacy counter: dual-card activation, purchases settled online, refunds."""


@pharmacy.command("activate")
@click.option("--old-reader", metavar="SPEC", default=None,
              help="Reader holding the old medical insurance card. Without it, one reader takes the old card, "
                   "then the new card in turn (PC/SC readers only).")
@reader_option
@site_options
@click.option("--wait", "wait_s", type=Seconds(1, 3600, low_included=True), default=SWAP_TIMEOUT, show_default=True,
              help="With one reader: seconds to wait for the clerk to swap the cards.")
@pin_stdin_option
@json_option()
def activate(old_reader: str | None, reader: str | None, config_path: Path | None, central_url: str | None,
             wait_s: float, pin_stdin: bool, as_json: bool) -> None:
    """Dual-card insert: move the old medical insurance card's account to the social security card.

    The platform moves it at once (an old card's account moves once, ever); with the platform
    unreachable, the move waits in the queue. Both cards must belong to the same person (exit 9
    otherwise); the cards the wrong way round, or the old card already moved: exit 15.
    """
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)
    reader = reader or default_reader()
    in_turn = old_reader is None or old_reader == reader
    if in_turn and reader.startswith(SIM_PREFIX):
        raise click.UsageError("a virtual card reader holds one card: give the old card's with --old-reader")
    with open_site(config_path, central_url) as (_config, site):
        if in_turn:
            with connect(reader) as connection:
                old = read_old_card(connection)
            clerk.say(f"Old card read: {old.name}.")
            clerk.say("Take out the old card and put the new social security card in the same reader.")
            wait_for_swap(reader, wait_s)
            with connect(reader) as connection:
                result = dual_card_activate(old, connection, site, clerk)
            finish(result.to_dict(), as_json)
        else:
            with connect(old_reader) as old_connection, connect(reader) as connection:
                dual_card_two_readers(old_connection, connection, site, clerk, as_json)


def dual_card_two_readers(old_connection: Connection, connection: Connection, site: Site, clerk: ScreenClerk,
                          as_json: bool) -> DualCardActivation:
    """The dual-card insert with both cards in their readers, and its result printed.

    Once the SS02 record is queued, an old card that stalls while it is being marked replaced no
    longer ends the command with exit 4 and nothing printed: the card watchdog reports the result
    with the note "Old card not marked replaced (not answering): ..." and exits 0 (the move is
    recorded; terminal/cli/watchdog.py).
    """
    old = read_old_card(old_connection)
    clerk.say(f"Old card read: {old.name}.")

    def recorded(provisional: DualCardActivation) -> None:
        def report(reason: str) -> int:
            result = dataclasses.replace(provisional, old_card_note=not_answering_note(reason))
            clerk.say(result.old_card_note)
            finish(result.to_dict(), as_json)
            return 0

        watchdog.on_timeout(report)

    try:
        result = dual_card_activate(old, connection, site, clerk, old_connection=old_connection, recorded=recorded)
        finish(result.to_dict(), as_json)
    finally:
        watchdog.on_timeout(None)
    return result


@pharmacy.command("purchase")
@reader_option
@site_options
@click.option("--sale", "sale_no", cls=Asked, prompt="Sale number", help="The till's sale number: a sale is paid once only.")
@click.option("--item", "item_specs", multiple=True, metavar="NAME:QTY:PRICE",
              help="An item, its quantity and unit price in yuan (repeat for each item); asked when absent.")
@pin_stdin_option
@json_option()
def purchase_command(reader: str | None, config_path: Path | None, central_url: str | None, sale_no: str,
                     item_specs: tuple[str, ...], pin_stdin: bool, as_json: bool) -> None:
    """Settle a sale online: the platform shows the split (fund, medical personal account, cash), the
    holder types the PIN, the platform settles it and answers the balance.

    \b
    Exit 16: the platform refused (insurance not in force, sale already settled...), or the sale
    number was used for other items here; 15: card not activated; 14: the platform could not be
    asked or its answer was lost and reversed (nothing paid); 17: its answer was lost and could not
    be reversed yet (do not hand over the goods: 'sscard queue resolve'). A sale already paid here
    is reported, never paid twice.
    """
    items = bill_items(item_specs, "Item", to_stderr=as_json)
    clerk = ScreenClerk(pin_stdin, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site), connect(reader) as connection:
        result = purchase(connection, site, sale_no, items, clerk)
    finish(result.to_dict(), as_json)


@pharmacy.command("refund")
@site_options
@click.option("--sale", "sale_no", cls=Asked, prompt="Sale number", help="The till's sale number of the sale to refund.")
@json_option()
def refund_command(config_path: Path | None, central_url: str | None, sale_no: str, as_json: bool) -> None:
    """Refund a sale paid at this terminal (2103): the platform gives back exactly what it took.

    \b
    The account share goes back to the medical personal account; the clerk gives back the cash share.
    Exit 16: no payment of this sale at this terminal, or the platform refused; 14/17 as for purchase.
    A sale already refunded is reported, never refunded twice.
    """
    clerk = ScreenClerk(False, to_stderr=as_json)
    with open_site(config_path, central_url) as (_config, site):
        result = refund(site, sale_no, clerk)
    finish(result.to_dict(), as_json)


COMMANDS = [pharmacy]
