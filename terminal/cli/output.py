"""How commands print a result as JSON (docs/json.md).

One ``--json`` option for every command (:func:`json_option`): the flag is remembered in the click
context, so that an error of a command run with ``--json`` is printed on stdout as
``{"error": {"code", "exit_code", "message"}}`` (:func:`terminal.cli.exits.error_object`, the
service's error schema too) as well as in words on stderr. :func:`print_json` is the one way a
result is printed: UTF-8 as is (names stay readable), indented, or one object per line for streams.
Prompts go to stderr (terminal/cli/prompts.py), so stdout holds the result alone.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sscard.apdu.errors import SSCardError
from sscard.terminal.cli.exits import error_object

F = TypeVar("F", bound=Callable[..., Any])

#: the key in ``click.Context.meta`` (shared by a command's context and its group's) set by ``--json``
JSON_ASKED = "sscard.json"
#: set when a result was printed with the error beside it
JSON_PRINTED = "sscard.json-printed"
#: set by a command that prints one object per line
JSON_LINES = "sscard.json-lines"


def _remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_ASKED] = True
    return value


def _remember_stream(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_LINES] = True
    return _remember(ctx, param, value)


def json_option(help: str = "Print the result as JSON on stdout.", *, stream: bool = False) -> Callable[[F], F]:
    """The ``--json`` flag (passed to the command as ``as_json``), read before the other options so
    that their errors are JSON too wherever it stands. ``stream``: the command prints one object per
    line (``watch``), and so does its error."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True,
                        callback=_remember_stream if stream else _remember, help=help)


def json_asked(ctx: click.Context) -> bool:
    """Whether the command being run was given ``--json``."""
    return bool(ctx.meta.get(JSON_ASKED))


def print_json(data: Any, *, line: bool = False, error: SSCardError | None = None) -> None:
    """``data`` as JSON on stdout: indented, or on one line (``line``, for a stream of objects).

    ``error``: the command did its work and then fails (a day that does not balance, records left
    unsent): one document, the result with the error object beside it under ``"error"``, which the
    command then raises; the error handler (terminal/cli/main.py) does not print it a second time.
    """
    if error is not None:
        data = {**data, "error": error_object(error)}
        click.get_current_context().meta[JSON_PRINTED] = True
    click.echo(json.dumps(data, ensure_ascii=False, indent=None if line else 2))


def json_lines(ctx: click.Context) -> bool:
    """Whether the command prints one JSON object per line (its error too)."""
    return bool(ctx.meta.get(JSON_LINES))


def json_printed(ctx: click.Context) -> bool:
    """Whether the command already printed its error inside its result (:func:`print_json`)."""
    return bool(ctx.meta.get(JSON_PRINTED))
