"""``sscard demo``: a day at a small clinic on virtual cards, uploaded to the reference central service."""
from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Walk a day at a small clinic (bank activation, registrations, dual-card insert, purchase), upload
    it to the reference central service on 127.0.0.1 and print what the service holds.

    Options: --dir DIR keeps the files; --json prints the service's messages as JSON.
    """
    from terminal.demo import main  # here: the demo pulls in the central service and httpx

    raise SystemExit(main(list(args)))


COMMANDS = [demo]
