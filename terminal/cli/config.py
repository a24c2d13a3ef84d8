"""``sscard config init|show``: the terminal's configuration file (terminal/config.py, docs/flows.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from sscard.terminal.cli.options import Count, config_option
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.config import default_config_path, load_config, write_default


@click.group("config")
def config_group() -> None:
    """The terminal's configuration: institution, region, operator, key store, queue, central service."""


@config_group.command()
@config_option
@click.option("--terminal-number", "terminal_no", type=Count(1, 99), default=None,
              help="This terminal's number within the institution (1-99), different for each terminal; "
                   "asked when absent at a terminal.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option()
def init(config_path: Path | None, terminal_no: int | None, force: bool, as_json: bool) -> None:
    """Write a commented default configuration file, to edit before first use.

    \b
    Each terminal of an institution needs its own number: it keeps their message ids apart. The file
    gets a new device identity too, so the platform tells two devices with one number apart.
    """
    if terminal_no is None:
        if not sys.stdin.isatty():
            raise click.UsageError("give this terminal its own number with --terminal-number N (1-99), "
                                   "different from every other terminal of the institution")
        terminal_no = click.prompt("This terminal's number within the institution (1-99, one per terminal)",
                                   type=Count(1, 99), err=True)
    path = write_default(config_path or default_config_path(), force=force, terminal_no=terminal_no)
    if as_json:
        print_json({"path": str(path), "terminal_no": terminal_no, "device": load_config(path).device})
        return
    click.echo(f"Wrote {path} (terminal {terminal_no}): edit the institution, region and operator before first use.")


@config_group.command()
@config_option
@json_option()
def show(config_path: Path | None, as_json: bool) -> None:
    """Print the configuration as the terminal reads it (exit 12 when it is invalid)."""
    from sscard.terminal.upload import shown_url  # here: the other config commands need no HTTP

    config = load_config(config_path)
    fields = {
        "path": str(config.path), "institution_code": config.institution_code,
        "institution_name": config.institution_name, "region": config.region, "terminal_no": config.terminal_no,
        "operator": f"{config.operator_id} {config.operator_name}", "key_store": config.key_store,
        "queue": str(config.queue_path), "central": shown_url(config.central_url), "credentials": config.central_credentials,
        "device": config.device, "desk_requires_pin": config.desk_requires_pin,
    }
    if as_json:
        print_json(fields)
    else:
        for key, value in fields.items():
            click.echo(f"{key:18} {value}")


COMMANDS = [config_group]
