"""Card security commands: ``sscard auth``, ``sscard change-pin``, ``sscard reset-pin``.

The key store is a PSAM (``--psam READER``, ``$SSCARD_PSAM``), a key file readable by its owner only
(``--key-file PATH``, ``$SSCARD_KEY_FILE``), or, with neither, the bundled TEST keys, with a warning:
they only fit the simulator's cards. Protocols: docs/card-profile.md, "Keys and security".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from sscard.terminal.card import SocialSecurityCard, holder
from sscard.terminal.cardsecurity import authenticate_terminal, check_genuine, reload_pin, unlocker
from sscard.terminal.cli.options import config_option, connect, id_number_asked, key_store_options, reader_option
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.cli.prompts import read_pin
from sscard.terminal.config import KeyStoreArgs
from sscard.terminal.errors import IdentityMismatchError
from sscard.terminal.keystore import CardKeyRef, KeyStore, open_key_store

TEST_KEYS_WARNING = (
    "Warning: using the TEST keys (public, for the simulator's virtual cards only): a card in a real reader "
    "is refused."
)
#: how the key store is chosen, said after the warning: by a command's options, or by the configuration
CHOOSE_WITH_OPTIONS = " Use --psam READER or --key-file PATH, or set [keys] store in the terminal configuration."
CHOOSE_IN_CONFIG = ' Set [keys] store in the terminal configuration ("psam:READER" or "file:PATH").'


def announce_key_store(store: KeyStore, *, options: bool = False) -> None:
    """Warn on stderr when the key store is the bundled TEST keys, and say how to choose another: with
    the command's ``--psam``/``--key-file`` (``options``) or the configuration's ``[keys] store``."""
    if store.test_only:
        click.echo(TEST_KEYS_WARNING + (CHOOSE_WITH_OPTIONS if options else CHOOSE_IN_CONFIG), err=True)


def chosen_key_store(psam: str | None, key_file: Path | None, config_path: Path | None) -> KeyStoreArgs:
    """The one way every command chooses its key store: ``--psam`` / ``--key-file`` when given, else
    the terminal configuration's ``[keys] store`` (when there is a configuration), else the TEST keys."""
    from sscard.terminal.config import find_config

    if psam is not None or key_file is not None:
        return {"psam": psam, "key_file": key_file}
    config = find_config(config_path)
    return config.key_store_args() if config else {"psam": None, "key_file": None}


@contextlib.contextmanager
def genuine_card(reader: str | None, psam: str | None, key_file: Path | None,
                 config_path: Path | None) -> Iterator[tuple[KeyStore, SocialSecurityCard, CardKeyRef]]:
    """The card in ``reader``, selected and proved genuine (:func:`check_genuine`) with the key store
    the options or the configuration choose (:func:`chosen_key_store`; the TEST keys announced)."""
    with open_key_store(**chosen_key_store(psam, key_file, config_path), connect=connect) as store, \
            connect(reader) as connection:
        announce_key_store(store, options=True)
        card = SocialSecurityCard(connection)
        card.select()
        yield store, card, check_genuine(card, store)


@click.command()
@reader_option
@key_store_options
@config_option
@click.option("--terminal", "also_terminal", is_flag=True,
              help="Also prove this terminal to the card (EXTERNAL AUTHENTICATE).")
@json_option("Print JSON on stdout.")
def auth(reader: str | None, psam: str | None, key_file: Path | None, config_path: Path | None, also_terminal: bool,
         as_json: bool) -> None:
    """Check that the card is genuine (internal authentication with a fresh random).

    \b
    Exit code 8: the card failed authentication (possibly counterfeit): do not accept it.
    Examples:
      sscard auth --reader sim:counterfeit
      sscard auth --reader "Virtual PCD 00 00" --psam "Virtual PCD 00 01"
    """
    with genuine_card(reader, psam, key_file, config_path) as (store, card, ref):
        if also_terminal:
            authenticate_terminal(card, store, ref)
    if as_json:
        print_json({"genuine": True, "algorithm": ref.algorithm.value, "terminal_authenticated": also_terminal,
                    "key_store": store.description, "test_keys": store.test_only})
        return
    click.echo(f"Genuine card: internal authentication passed ({ref.algorithm.value}, {store.description}).")
    if also_terminal:
        click.echo("Terminal authenticated to the card: it accepts updates until it is removed.")


@click.command("change-pin")
@reader_option
@click.option("--pin-stdin", is_flag=True, help="Read the current PIN, then the new PIN, one a line, from standard input.")
@json_option()
def change_pin(reader: str | None, pin_stdin: bool, as_json: bool) -> None:
    """Change the holder's PIN (the holder types the current PIN, then the new one twice).

    Weak PINs (one digit repeated, consecutive digits such as 123456) are refused (exit 11).
    Exit code 6: wrong current PIN; 7: PIN blocked.
    """
    with connect(reader) as connection:
        card = SocialSecurityCard(connection)
        card.select()
        old = read_pin("Current PIN", pin_stdin)
        new = read_pin("New PIN", pin_stdin, confirm=True)
        card.change_pin(old, new)
    if as_json:
        print_json({"reader": connection.name, "changed": True})
        return
    click.echo("PIN changed.")


def _same_person(typed: str, on_card: str) -> bool:
    return typed.strip().upper() == on_card.strip().upper()


@click.command("reset-pin")
@reader_option
@key_store_options
@config_option
@id_number_asked
@click.option("--pin-stdin", is_flag=True, help="Read the new PIN from the first line of standard input.")
@json_option()
def reset_pin(reader: str | None, psam: str | None, key_file: Path | None, config_path: Path | None, id_number: str,
              pin_stdin: bool, as_json: bool) -> None:
    """Bank counter: set a new PIN and unblock it, after checking the holder's ID document.

    The card must be genuine and its social security number must match the ID document, whose
    number the clerk types at the prompt (or the first line of standard input; never on the command
    line); the new PIN (typed twice, weak PINs refused) is loaded with a MAC from the key store
    (RELOAD PIN).
    Exit code 8: card not genuine or keys refused; 9: ID document does not match the card.
    """
    with genuine_card(reader, psam, key_file, config_path) as (store, card, ref):
        identity = card.read_identity(unlocker(store))
        if not _same_person(id_number, identity.social_security_number):
            raise IdentityMismatchError()
        new = read_pin("New PIN", pin_stdin, confirm=True)
        reload_pin(card, store, ref, new)
        tries = card.pin_tries_left()
    if as_json:
        print_json({"reader": card.connection.name, "holder": holder(identity), "pin_reset": True,
                    "pin_tries_left": tries})
        return
    click.echo(f"PIN reset for {identity.name[:1]}{'*' * (len(identity.name) - 1)}: "
               f"the holder can use the new PIN now ({tries} tries).")


COMMANDS: list[click.Command] = [auth, change_pin, reset_pin]
