"""Card commands: ``sscard read`` and ``sscard verify-pin``."""
from __future__ import annotations

from pathlib import Path

import click

from sscard.terminal.card import Identity, SocialSecurityCard, Unlock
from sscard.terminal.cli.options import config_option, connect, key_store_options, reader_option
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.cli.prompts import read_pin

#: text labels, in the order a clerk reads them
LABELS = (
    ("full_name", "姓名 Name"),
    ("sex_name", "性别 Sex"),
    ("ethnicity_name", "民族 Ethnicity"),
    ("birth_date", "出生日期 Birth date"),
    ("birthplace", "出生地 Birthplace"),
    ("social_security_number", "社会保障号码 Social security number"),
    ("card_number", "卡号 Card number"),
    ("card_identification_code", "卡识别码 Card identification code"),
    ("issuing_region", "发卡地区 Issuing region"),
    ("card_type", "卡的类别 Card type"),
    ("spec_version", "规范版本 Spec version"),
    ("initialising_institution", "初始化机构 Initialising institution"),
    ("issue_date", "发卡日期 Issue date"),
    ("expiry_date", "卡有效期 Expiry date"),
    ("card_reset_info", "卡复位信息 Card reset info"),
)


def unlock_with(psam: str | None, key_file: Path | None, config_path: Path | None) -> Unlock:
    """A third-generation card's external authentication before its holder's data, with the key store
    the command's options or configuration choose (terminal/cli/security.py: ``--psam``/``--key-file``,
    else the configuration's ``[keys] store``, else the TEST keys, which vouch for virtual cards only);
    opened only for such a card."""

    def unlock(card: SocialSecurityCard, code: str, spec_version: str) -> None:
        from sscard.terminal.cardsecurity import unlocker
        from sscard.terminal.cli.security import announce_key_store, chosen_key_store
        from sscard.terminal.keystore import open_key_store

        with open_key_store(**chosen_key_store(psam, key_file, config_path), connect=connect) as store:
            announce_key_store(store, options=True)
            unlocker(store)(card, code, spec_version)

    return unlock


def format_identity(fields: dict[str, object], activated: bool) -> str:
    """Aligned text, one labelled field per line."""
    width = max(len(label.encode("gbk")) for _, label in LABELS)
    lines = [f"{label}{' ' * (width - len(label.encode('gbk')))}  {fields[key] or '-'}" for key, label in LABELS]
    lines.append("状态 State" + " " * (width - 10) + ("  activated" if activated else "  NOT ACTIVATED (activate at a bank counter or by a first registration)"))
    return "\n".join(lines)


@click.command()
@reader_option
@json_option("Print JSON on stdout (every field decoded).")
@click.option("--redact", is_flag=True, help="Mask the ID number, card number, name and birth date.")
@click.option("--bank", is_flag=True,
              help="Read the card's bank account instead (its bank application; no PIN): number masked 6+4.")
@click.option("--show-account", is_flag=True, help="With --bank: the whole account number.")
@key_store_options
@config_option
def read(reader: str | None, as_json: bool, redact: bool, bank: bool, show_account: bool, psam: str | None,
         key_file: Path | None, config_path: Path | None) -> None:
    """Read the holder's and the card's data from the social security card.

    A third-generation card (spec 3.00) shows the holder's data only after this terminal has
    authenticated itself: with --psam or --key-file, else the configuration's [keys] store, else the
    TEST keys (virtual cards only). One card, two accounts: --bank reads the bank application's account
    number and expiry (docs/bank-application.md); exit 5 when the card has none.

    \b
    Examples:
      sscard read                          # the built-in virtual card
      sscard read --reader 0 --json        # first PC/SC reader, JSON
      sscard read --reader "Virtual PCD 00 00" --redact
      sscard read --bank                   # 银行账户 621700*********4565
      sscard read --reader 0 --psam 1      # a 3.00 card, the PSAM in the second reader
    """
    if show_account and not bank:
        raise click.UsageError("--show-account goes with --bank")
    if bank and redact:
        raise click.UsageError("--bank masks the account number already: --redact is for the holder's data")
    if config_path is not None:  # named: it must be one, even when this card needs no key store from it
        from sscard.terminal.config import load_config

        load_config(config_path)
    if bank and (psam or key_file):
        raise click.UsageError("--bank reads the bank application, which needs no key store: --psam and --key-file "
                               "are for a third-generation card's holder data")
    if bank:
        with connect(reader) as connection:
            account = SocialSecurityCard(connection).read_bank_account()
        if as_json:
            print_json(account.to_dict(full_number=show_account))
        else:
            shown = account.to_dict(full_number=show_account)
            click.echo(f"银行账户 Bank account  {shown['account_number']}  ({account.label}, {account.kind}, "
                       f"expires {account.expiry})")
        return
    with connect(reader) as connection:
        identity = SocialSecurityCard(connection).read_identity(unlock_with(psam, key_file, config_path))
    fields = identity.to_dict(redact=redact)
    if as_json:
        print_json(fields)
    else:
        click.echo(format_identity(fields, identity.activated))


@click.command("verify-pin")
@reader_option
@click.option("--pin-stdin", is_flag=True, help="Read the PIN from the first line of standard input.")
@json_option()
def verify_pin(reader: str | None, pin_stdin: bool, as_json: bool) -> None:
    """Check the holder's PIN on the card (shows the tries left on a wrong PIN).

    The PIN is asked at a hidden prompt, or read from standard input when it is not a terminal.
    Exit code 6: wrong PIN; 7: PIN blocked.
    """
    with connect(reader) as connection:
        card = SocialSecurityCard(connection)
        card.select()
        pin = read_pin("PIN", pin_stdin)
        card.verify_pin(pin)
    if as_json:
        print_json({"reader": connection.name, "verified": True})
        return
    click.echo("PIN correct.")


COMMANDS = [read, verify_pin]
__all__ = ["COMMANDS", "Identity"]
