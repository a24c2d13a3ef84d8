"""Options several commands share: the reader, the terminal's configuration, the key store.

Kept apart from the commands (and light: click only) so that a command imports only what it uses
(bench/startup.py)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

reader_option = click.option(
    "--reader", "-r", metavar="SPEC", default=None,
    help="Reader: index, name or ATR of a PC/SC reader, or sim:PROFILE for a virtual card "
         "(default: $SSCARD_READER, else the built-in virtual card sim:adult).",
)

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The terminal's configuration file [default: $SSCARD_CONFIG, else ~/.config/sscard/terminal.toml].",
)


def key_store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--psam`` and ``--key-file``: where the master keys are."""
    command = click.option(
        "--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="SSCARD_KEY_FILE", default=None,
        help="Master key file (JSON, mode 600: refused if others can read it) [env SSCARD_KEY_FILE].",
    )(command)
    return click.option(
        "--psam", metavar="READER", envvar="SSCARD_PSAM", default=None,
        help="Reader holding the PSAM (index, name, ATR, or sim:psam) [env SSCARD_PSAM]. "
             "Default without --key-file: the bundled TEST keys.",
    )(command)
