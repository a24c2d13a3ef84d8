"""Options several commands share (the reader, the terminal's configuration, the key store) and the
types that check a value at the edge: a number is finite and in range, written in ASCII digits; a
text is bounded and has no control characters. A bad value is exit 2 with what is wrong, before
anything is done (docs/security.md, "Hostile input").

Kept apart from the commands (and light: click only) so that a command imports only what it uses
(bench/startup.py)."""
from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sscard.drivers.connection import Connection
from sscard.terminal.config import DEFAULT_CENTRAL
from sscard.terminal.readers import open_connection

#: the longest reader spec taken (a PC/SC reader name is at most a few dozen characters)
MAX_READER_SPEC = 256


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control or format character (C0, C1, bidi overrides, zero widths)."""
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


class Checked(click.ParamType[Any, Any]):
    """A parameter type whose refusals name the environment variable when the value came from one
    (an invalid ``$SSCARD_...`` is an error, not ignored)."""

    def fail(self, message: str, param: click.Parameter | None = None, ctx: click.Context | None = None) -> Any:
        source = ctx.get_parameter_source(param.name) if ctx and param and param.name else None
        envvar = getattr(param, "envvar", None)
        if source is click.core.ParameterSource.ENVIRONMENT and isinstance(envvar, str):
            message = f"{message} (from ${envvar})"
        super().fail(message, param, ctx)


class Seconds(Checked):
    """A duration in seconds: a finite decimal number (ASCII) with ``low < value <= high`` (``low``
    included when ``low_included``). ``nan``, ``inf`` and ``1e400`` are not durations."""

    name = "seconds"

    def __init__(self, low: float, high: float, *, low_included: bool = False) -> None:
        self.low, self.high, self.low_included = low, high, low_included

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if not text.isascii() or not text or any(c not in "0123456789.eE+-" for c in text):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
            try:
                number = float(text)
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        above = number >= self.low if self.low_included else number > self.low
        if not math.isfinite(number) or not above or number > self.high:
            low = f"{self.low:g} {'<=' if self.low_included else '<'}"
            self.fail(f"{value!r} is not in the range {low} seconds <= {self.high:g}", param, ctx)
        return number


class Text(Checked):
    """A text of 1 to ``longest`` characters with no control characters (a name, a department)."""

    name = "text"

    def __init__(self, longest: int) -> None:
        self.longest = longest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail("must not be empty", param, ctx)
        if len(text) > self.longest:
            self.fail(f"is {len(text)} characters long: at most {self.longest}", param, ctx)
        if has_control(text):
            self.fail("must not hold control characters", param, ctx)
        return text


class FilePath(Checked, click.Path):
    """``click.Path`` for a file or folder this terminal reads or writes: no NUL or control
    characters, at most 4,096 characters and 255 bytes a component (what file systems take), so a
    path no file can have is exit 2 here, not an operating-system error later."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if has_control(text):
            self.fail("a path must not hold control characters", param, ctx)
        names = text.replace("\\", "/").split("/")  # Windows separates with either
        if len(text) > 4096 or any(len(name.encode("utf-8", "surrogateescape")) > 255 for name in names):
            self.fail("is too long to be a path (at most 4,096 characters, 255 bytes a name)", param, ctx)
        if not self.file_okay and os.path.exists(text) and not os.path.isdir(text):
            self.fail(f"{text!r} is not a folder", param, ctx)  # a device or a FIFO as much as a file
        return super().convert(value, param, ctx)


class Count(Checked, click.IntRange):
    """A whole number in a range (``click.IntRange``), written in ASCII digits: ``int()`` also takes
    other scripts' digits ("１２", "١٢"), which are not what a clerk means to type."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not (value.strip().isascii() and value.strip().isdigit()):
            self.fail(f"{value[:40]!r} is not a whole number (digits 0-9)", param, ctx)
        return super().convert(value, param, ctx)


#: how many records a listing shows at most
LIMIT = Count(1, 100_000)
#: what is said to whoever puts the ID number on the command line
ID_NUMBER_NOT_IN_ARGV = ("The holder's ID number is not taken on the command line, where 'ps' and the shell history "
                         "keep it: type it at the prompt, or give it as the first line of standard input")

#: click's context key for ``sscard --exclusive`` (set by the group, read by :func:`connect`)
EXCLUSIVE = "sscard.exclusive"


def exclusive() -> bool:
    """Whether this run holds PC/SC readers exclusively (``sscard --exclusive``)."""
    context = click.get_current_context(silent=True)
    return bool(context and context.meta.get(EXCLUSIVE))


def connect(spec: str | None) -> Connection:
    """The card in the reader ``--reader`` named (terminal/readers.py), shared with other programs
    unless ``sscard --exclusive`` was given."""
    return open_connection(spec, exclusive=exclusive())


reader_option = click.option(
    "--reader", "-r", metavar="SPEC", default=None, type=Text(MAX_READER_SPEC),
    help="Reader: index, name or ATR of a PC/SC reader, or sim:PROFILE for a virtual card "
         "(default: $SSCARD_READER, else the built-in virtual card sim:adult).",
)

config_option = click.option(
    "--config", "config_path", type=FilePath(dir_okay=False, path_type=Path), default=None,
    help="The terminal's configuration file [default: $SSCARD_CONFIG, else ~/.config/sscard/terminal.toml].",
)


central_option = click.option(
    "--central", "central_url", envvar="SSCARD_CENTRAL", default=None, metavar="URL",
    help="The platform's URL [default: $SSCARD_CENTRAL, else the terminal configuration's [central] url,"
         f" else {DEFAULT_CENTRAL}].",
)


def site_options(command: Any) -> Any:
    """``--config`` and ``--central``: the terminal a counter command records for, and its platform."""
    return config_option(central_option(command))


def _id_number(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The ID number typed at the prompt or read from standard input (never from argv: exit 2). One
    typed with a mistake is "not an ID number" (asked again at a prompt; exit 2 from a pipe), not a
    person other than the card's."""
    if value is None:
        return None
    if param.name and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(ID_NUMBER_NOT_IN_ARGV)
    from sscard.terminal.cli.prompts import at_terminal
    from sscard.terminal.flows.common import IDNumberFormatError, check_id_number  # here: `sscard read` starts faster

    try:
        return check_id_number(value)
    except IDNumberFormatError as err:
        if at_terminal():  # the prompt says why and asks again
            raise click.BadParameter(str(err)) from None
        raise click.UsageError(f"The ID number on standard input: {str(err).removesuffix(' Type it again.')}") from None


def id_number_asked(command: Callable[..., Any]) -> Callable[..., Any]:
    """The holder's ID document number, asked at a prompt on stderr, or the first line of standard
    input when it is not a terminal (before any PIN). Hidden: ``--id-number`` on the command line is
    refused (docs/security.md, "Hostile input")."""
    from sscard.terminal.cli.prompts import Asked

    return click.option("--id-number", cls=Asked, prompt="ID document number (身份证号码)", hidden=True,
                        callback=_id_number)(command)


def key_store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--psam`` and ``--key-file``: where the master keys are."""
    command = click.option(
        "--key-file", type=FilePath(dir_okay=False, path_type=Path), envvar="SSCARD_KEY_FILE", default=None,
        help="Master key file (JSON, mode 600: refused if others can read it) [env SSCARD_KEY_FILE].",
    )(command)
    return click.option(
        "--psam", metavar="READER", envvar="SSCARD_PSAM", default=None, type=Text(MAX_READER_SPEC),
        help="Reader holding the PSAM (index, name, ATR, or sim:psam) [env SSCARD_PSAM]. "
             "Default without --key-file: the bundled TEST keys.",
    )(command)
