"""What the counter commands share: the configuration option, the site, the clerk at the screen.

Progress lines go to stdout, or to stderr under ``--json`` (stdout then holds the JSON result only).
PINs are asked at hidden prompts, or read one per line from stdin with ``--pin-stdin`` (never an
option: it would show in ``ps``). docs/flows.md has a clerk's transcript of every command.
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from terminal.cli import watchdog
from terminal.cli.security import announce_key_store
from terminal.config import TerminalConfig, load_config
from terminal.crypto import open_key_store
from terminal.flows.common import Site
from terminal.queue import Outbox

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The terminal's configuration file [default: $SSCARD_CONFIG, else ~/.config/sscard/terminal.toml].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
pin_stdin_option = click.option("--pin-stdin", is_flag=True,
                                help="Read PINs from standard input, one per line (for scripts).")


@dataclass
class ScreenClerk:
    """The clerk at the terminal's screen (implements :class:`terminal.flows.common.Clerk`)."""

    pin_stdin: bool = False
    to_stderr: bool = False

    def say(self, text: str) -> None:
        with watchdog.OUTPUT:  # never beside the card watchdog's report (terminal/cli/watchdog.py)
            click.echo(text, err=self.to_stderr)

    def ask_pin(self, prompt: str) -> str:
        if self.pin_stdin:
            line = sys.stdin.readline()
            if not line:
                raise click.UsageError("no PIN on standard input")
            return line.strip()
        return click.prompt(prompt, hide_input=True, err=self.to_stderr)


@contextlib.contextmanager
def open_site(config_path: Path | None) -> Iterator[tuple[TerminalConfig, Site]]:
    """The configuration, and the site it names (queue opened with the station, key store opened)."""
    config = load_config(config_path)
    with Outbox(config.queue_path, config.station) as outbox, open_key_store(**config.key_store_args()) as keys:
        announce_key_store(keys)
        yield config, Site(outbox, keys)


def finish(result: dict[str, Any], as_json: bool, text: list[str] | None = None) -> None:
    """Print the result: JSON on stdout, or the text lines (when any)."""
    with watchdog.OUTPUT:
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        elif text:
            for line in text:
                click.echo(line)
