"""``sscard demo``: a day at a small clinic on virtual cards, online with the virtual platform."""
from __future__ import annotations

from pathlib import Path

import click

from terminal.cli.output import json_option


@click.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the journals and the platform's ledger in this folder [default: a temporary one].")
@json_option("Print what the platform holds as JSON on stdout.")
def demo(folder: Path | None, as_json: bool) -> None:
    """Walk a day at a small clinic online: bank activation, registrations, dual-card insert,
    purchases, a refund, a lost answer reversed, the day-end reconciliation; then print what the
    virtual platform holds (exit 18 if the day does not balance)."""
    from terminal.demo import main  # here: the demo pulls in the platform and httpx

    raise SystemExit(main(folder, as_json))


COMMANDS = [demo]
