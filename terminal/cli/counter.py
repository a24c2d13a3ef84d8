"""What the counter commands share: the configuration option, the site, the clerk at the screen.

Progress lines go to stdout, or to stderr under ``--json`` (stdout then holds the JSON result only).
PINs are asked at hidden prompts, or read one per line from stdin (terminal/cli/prompts.py). docs/flows.md has a clerk's transcript of every command.

Every counter command talks to the platform at ``--central`` (else ``$SSCARD_CENTRAL``, else the
configuration's ``[central] url``) and first resolves what its journal left unknown (a lost answer
of an earlier run: docs/platform.md, "The journal"), saying so on stderr.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sscard.apdu.errors import SSCardError
from sscard.terminal.cli import prompts, watchdog
from sscard.terminal.cli.options import connect
from sscard.terminal.cli.output import print_json
from sscard.terminal.config import TerminalConfig, load_config
from sscard.terminal.flows import common
from sscard.terminal.flows.common import Site
from sscard.terminal.flows.settlement import Item
from sscard.terminal.keystore import open_key_store

pin_stdin_option = click.option("--pin-stdin", is_flag=True,
                                help="Read PINs from standard input, one per line (so they are read whenever it is not a terminal).")
yes_option = click.option("--yes", "agrees", is_flag=True,
                          help="Answer yes to the clerk's confirmations (a maternity registration for a male holder).")


@dataclass
class ScreenClerk:
    """The clerk at the terminal's screen (implements :class:`terminal.flows.common.Clerk`)."""

    pin_stdin: bool = False
    to_stderr: bool = False
    #: ``--yes``: the clerk confirmed in advance
    agrees: bool = False

    def say(self, text: str) -> None:
        with watchdog.OUTPUT:  # never beside the card watchdog's report (terminal/cli/watchdog.py)
            click.echo(text, err=self.to_stderr)

    def ask_pin(self, prompt: str) -> str:
        return prompts.read_pin(prompt, self.pin_stdin)

    def can_ask_again(self) -> bool:
        """A person at the terminal may type a wrong PIN again; a piped line is one try."""
        return prompts.can_ask_again(self.pin_stdin)

    def confirm(self, question: str) -> bool:
        if self.agrees:
            self.say(f"{question} yes (--yes)")
            return True
        if prompts.at_terminal():
            return click.confirm(question, default=False, err=self.to_stderr)
        self.say(f"{question} no: there is no terminal to ask at (give --yes to confirm)")
        return False


def bill_items(specs: tuple[str, ...], label: str, to_stderr: bool = False) -> list[Item]:
    """The bill's items from ``--item`` options, else asked one per line (an empty line ends the bill;
    the prompts on stderr with ``to_stderr``, so that ``--json`` keeps stdout for the result)."""
    if specs:
        return [Item.parse(spec) for spec in specs]
    items: list[Item] = []
    while True:
        line = click.prompt(f"{label} (NAME:QUANTITY:PRICE, empty to finish)", default="", show_default=False,
                            err=to_stderr)
        if not line.strip():
            return items
        try:
            items.append(Item.parse(line))
        except SSCardError as err:  # a typo: said, and asked again; the items typed so far are kept
            click.echo(f"{err}: type the item again.", err=True)


def say_on_stderr(text: str) -> None:
    """Warnings and what was resolved, on stderr (stdout is the result's)."""
    click.echo(text, err=True)


@contextlib.contextmanager
def open_site(config_path: Path | None, central_url: str | None = None) -> Iterator[tuple[TerminalConfig, Site]]:
    """The configuration, and the site it names (:func:`terminal.flows.common.open_site`), its warnings
    and what it resolved said on stderr."""
    from sscard.terminal.cli.security import announce_key_store  # here: security's commands use this module's options

    config = load_config(config_path)
    with open_key_store(**config.key_store_args(), connect=connect) as keys:
        announce_key_store(keys)
        with common.open_site(config, keys, central_url, say=say_on_stderr) as site:
            yield config, site


def finish(result: dict[str, Any], as_json: bool, text: list[str] | None = None) -> None:
    """Print the result: JSON on stdout, or the text lines (when any)."""
    with watchdog.OUTPUT:
        if as_json:
            print_json(result)
        elif text:
            for line in text:
                click.echo(line)
