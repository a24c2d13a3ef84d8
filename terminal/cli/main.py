"""The ``sscard`` group: logging, error handling and exit codes shared by every command.

Every expected failure is an :class:`apdu.errors.SSCardError`: it is printed as one line on stderr
(and, for a command run with ``--json``, as ``{"error": {"code", "exit_code", "message"}}`` on
stdout: docs/json.md) and the process exits with its code (terminal/cli/exits.py, the one table;
README, "Exit codes"); ``-v`` adds the error's class, never a traceback (a wrong PIN is not a bug).
Ctrl-C anywhere, or Ctrl-C / Ctrl-D at a prompt, is "Interrupted." and exit 130 (128 + SIGINT, the
shell's convention). Anything else is a bug: one line on stderr, exit 1, and the traceback only with
``-v``. A stdout its reader closed (``sscard ... | head``) ends the command quietly, exit 0. Under
``--json`` these have error objects too (codes ``interrupted``, ``usage``, ``internal``); the card watchdog's exit
(terminal/cli/watchdog.py) leaves the process from its own thread with its line on stderr only.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from sscard.apdu.errors import SSCardError
from sscard.terminal.cli import watchdog
from sscard.terminal.cli.exits import INTERNAL, INTERRUPTED, error_object, exit_code
from sscard.terminal.cli.options import EXCLUSIVE, Seconds
from sscard.terminal.cli.output import json_asked, json_lines, json_printed, print_json

log = logging.getLogger("sscard")

#: each command -> the module of terminal.cli that defines it (in its ``COMMANDS`` list), imported
#: when the command is run or listed: ``sscard read`` does not import the platform's client, SQLite
#: or the service (bench/startup.py measures it)
COMMAND_MODULES = {
    "read": "card", "verify-pin": "card", "readers": "reader", "simulate": "reader", "watch": "reader",
    "queue": "queue", "central": "queue", "auth": "security", "change-pin": "security", "reset-pin": "security",
    "config": "config", "desk": "desk", "pharmacy": "pharmacy", "bank": "bank", "kiosk": "kiosk",
    "reconcile": "reconcile", "serve": "serve", "demo": "demo",
}


class SSCardGroup(click.Group):
    """A click group that turns our errors into a clear line and a distinct exit code, and imports a
    command's module only when that command is wanted (:data:`COMMAND_MODULES`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            for command in importlib.import_module(f"sscard.terminal.cli.{module}").COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SSCardError as err:  # expected: the message says it all, no traceback
            log.debug("%s (exit %d)", type(err).__name__, exit_code(err))
            fail(ctx, error_object(err), f"Error: {err}")
        except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl-C/Ctrl-D at a prompt into Abort
            fail(ctx, {"code": "interrupted", "exit_code": INTERRUPTED, "message": "Interrupted."}, "Interrupted.")
        except click.UsageError as err:  # click prints it; under --json the error object too
            json_error(ctx, {"code": "usage", "exit_code": err.exit_code, "message": err.format_message()})
            raise
        except (click.exceptions.Exit, click.ClickException):
            raise
        except BrokenPipeError:  # stdout closed by its reader (`sscard ... | head`): a quiet end
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
            ctx.exit(0)
        except Exception as err:  # a bug: say so, without a traceback unless -v
            log.debug("internal error", exc_info=True)
            message = (f"{err.strerror or err}" if isinstance(err, OSError)
                       else f"Internal error ({type(err).__name__}): {err}. Run with -v for details.")
            fail(ctx, {"code": "internal", "exit_code": INTERNAL, "message": message}, f"Error: {message}")


def fail(ctx: click.Context, error: dict[str, Any], line: str) -> None:
    """Report a failure: ``line`` on stderr, the error object on stdout under ``--json`` (unless the
    command printed it beside its result), and exit with the error's code."""
    with watchdog.OUTPUT:  # never beside the card watchdog's report
        json_error(ctx, error)
        click.echo(line, err=True)
    ctx.exit(error["exit_code"])


def json_error(ctx: click.Context, error: dict[str, Any]) -> None:
    """Under ``--json``, the error object on stdout in the result's place (a program reads stdout),
    unless the command printed it beside its result; on one line for a stream command."""
    if json_asked(ctx) and not json_printed(ctx):
        print_json({"error": error}, line=json_lines(ctx))

def setup_logging(verbosity: int) -> None:
    """``-v``: APDU trace and info on stderr; ``-vv``: everything at DEBUG.

    Our own stderr handler replaces the one a previous run installed (the CLI may run many times in
    one process, as in tests); handlers others attached to the root logger are left alone.
    """
    level = logging.WARNING if verbosity == 0 else logging.DEBUG
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sscard", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._sscard = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


@click.group(cls=SSCardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Trace APDUs (PIN data masked) and details on stderr.")
@click.option("--exclusive", is_flag=True,
              help="Hold PC/SC readers exclusively (no other program can use them meanwhile).")
@click.option("--card-timeout", type=Seconds(0, 600), envvar="SSCARD_CARD_TIMEOUT", default=watchdog.DEFAULT_TIMEOUT_S,
              metavar="SECONDS", help="Give up on a card that does not answer a command within SECONDS "
                                      f"[env SSCARD_CARD_TIMEOUT; default {watchdog.DEFAULT_TIMEOUT_S:g}].")
@click.version_option(package_name="sscard-terminal")
def main(verbose: int, exclusive: bool, card_timeout: float) -> None:
    """Terminal software for the social security card (社会保障卡).

    With no reader given, commands use the built-in virtual card (an in-memory simulator), so they
    work on a machine with no reader. Use --reader to pick a real or pcscd virtual reader.
    """
    setup_logging(verbose)
    watchdog.arm(card_timeout)
    click.get_current_context().meta[EXCLUSIVE] = exclusive  # terminal/cli/options.py connect()

