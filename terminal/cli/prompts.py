"""How commands ask: options at prompts, PINs at hidden prompts or from standard input.

One rule for every command: at a terminal a missing value is asked, with its default offered; when
standard input is not a terminal (a script, a pipe) a value with a default takes it unasked, so that
the lines piped in are answers to the questions that have none (``desk register --department 内科
--pin-stdin`` reads the PIN, not the registration type, from its first line). A PIN comes from
standard input, one line each, with ``--pin-stdin`` or when standard input is not a terminal; at a
terminal it is typed at a hidden prompt. Prompts go to stderr, so stdout holds the result alone
(``--json``). A PIN, like the holder's ID number, is never a command-line option: it would show in
``ps``.
"""
from __future__ import annotations

import sys
from typing import Any

import click

#: the longest line of standard input taken as an answer (an ID number, a PIN, a name)
MAX_LINE = 1024


def at_terminal() -> bool:
    """Whether a person types the answers (standard input is a terminal)."""
    return sys.stdin.isatty()


class Asked(click.Option):
    """An option asked at a prompt when it is not given, the prompt on stderr (``cls=Asked``).

    Click prompts on stdout, where a program reading a command's ``--json`` result would get the
    prompt in front of it; and it prompts for an option with a default even when no one is there to
    answer. The prompted options here have string defaults or none.
    """

    def prompt_for_value(self, ctx: click.Context) -> Any:
        assert self.prompt is not None
        default = self.get_default(ctx)
        default = default if isinstance(default, str) else None
        if not at_terminal():  # no one to ask: the default, else one line of the pipe, one try
            if default is not None:
                return self.process_value(ctx, default)
            return self.process_value(ctx, piped_line(self.prompt, "pipe one line for it"))
        return click.prompt(self.prompt, default=default, type=self.type,
                            hide_input=self.hide_input, show_choices=self.show_choices,
                            value_proc=lambda text: self.process_value(ctx, text), err=True)


def piped_line(what: str, how: str) -> str:
    """The next line of standard input (no one at a terminal to ask), trimmed: an empty pipe, or a line
    longer than any answer (:data:`MAX_LINE`), is a usage error saying ``how`` to give ``what``."""
    line = sys.stdin.readline(MAX_LINE + 1)
    if not line:
        raise click.UsageError(f"no {what} on standard input: {how}, or run the command at a terminal to type it")
    if len(line) > MAX_LINE:
        raise click.UsageError(f"the {what} on standard input is longer than {MAX_LINE} characters")
    return line.strip()


def read_pin(prompt: str, from_stdin: bool = False, confirm: bool = False) -> str:
    """A PIN: one line of standard input (``from_stdin``, or no terminal to type it at), else typed at
    a hidden prompt on stderr, twice with ``confirm`` (a new PIN).

    Never Python's getpass fallback, which warns and echoes when there is no terminal.
    """
    if from_stdin or not at_terminal():
        return piped_line("PIN", "pipe one line per PIN (with --pin-stdin)")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)


def can_ask_again(from_stdin: bool) -> bool:
    """Whether a wrong PIN may be typed again: a person at a terminal may; a piped line is one try."""
    return not from_stdin and at_terminal()
