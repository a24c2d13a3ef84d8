"""``sscard demo``: a day at a small clinic on virtual cards, online with the virtual platform."""
from __future__ import annotations

from pathlib import Path

import click

from sscard.terminal.cli.options import FilePath
from sscard.terminal.cli.output import json_option, print_json


@click.command()
@click.option("--dir", "folder", type=FilePath(file_okay=False, path_type=Path), default=None,
              help="Keep the journals and the platform's ledger in this folder [default: a temporary one].")
@json_option("Print what the platform holds as JSON on stdout.")
def demo(folder: Path | None, as_json: bool) -> None:
    """Walk a day at a small clinic online: bank activation, registrations, dual-card insert,
    purchases, a refund, a lost answer reversed, the day-end reconciliation; then print what the
    virtual platform holds (exit 18 if the day does not balance)."""
    import sys

    from sscard.terminal.cli.reconcile import UnbalancedError
    from sscard.terminal.demo import print_holdings, walk  # here: the demo pulls in the platform and httpx

    held = walk(folder, sys.stderr if as_json else sys.stdout)
    error = None if held["reconciliation"]["balanced"] else UnbalancedError(
        "The demo day does not balance: the journals and the virtual platform differ (see the reconciliation).")
    if as_json:
        print_json(held, error=error)
    else:
        print_holdings(held, sys.stdout)
    if error:
        raise error


COMMANDS = [demo]
