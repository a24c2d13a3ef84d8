"""``sscard config init|show``: the terminal's configuration file (terminal/config.py, docs/flows.md)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from terminal.cli.counter import config_option, json_option
from terminal.config import default_config_path, load_config, write_default


@click.group("config")
def config_group() -> None:
    """The terminal's configuration: institution, region, operator, key store, queue, central service."""


@config_group.command()
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path | None, force: bool) -> None:
    """Write a commented default configuration file, to edit before first use."""
    path = write_default(config_path or default_config_path(), force=force)
    click.echo(f"Wrote {path}: edit the institution, region and operator before first use.")


@config_group.command()
@config_option
@json_option
def show(config_path: Path | None, as_json: bool) -> None:
    """Print the configuration as the terminal reads it (exit 12 when it is invalid)."""
    config = load_config(config_path)
    fields = {
        "path": str(config.path), "institution_code": config.institution_code,
        "institution_name": config.institution_name, "region": config.region, "terminal_no": config.terminal_no,
        "operator": f"{config.operator_id} {config.operator_name}", "key_store": config.key_store,
        "queue": str(config.queue_path), "central": config.central_url, "desk_requires_pin": config.desk_requires_pin,
    }
    if as_json:
        click.echo(json.dumps(fields, ensure_ascii=False, indent=2))
    else:
        for key, value in fields.items():
            click.echo(f"{key:18} {value}")


COMMANDS = [config_group]
