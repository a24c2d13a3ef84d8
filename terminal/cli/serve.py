"""``sscard serve``: the local service for hospital software (terminal/service.py, docs/service.md)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sscard.terminal.cli import watchdog
from sscard.terminal.cli.options import Count, FilePath, connect, exclusive, reader_option, site_options


@click.command()
@reader_option
@click.option("--contactless-reader", metavar="SPEC", default=None,
              help="The contactless reader, when the counter has one (iType 2, 3 and 4 use it).")
@click.option("--port", type=Count(0, 65535), default=8940, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="127.0.0.1 or ::1: this computer only.")
@click.option("--allow-origin", "origins", multiple=True, metavar="ORIGIN",
              help="A web page origin allowed to use the service, scheme://host[:port] exactly as the hospital "
                   "system's page is served (repeat for each). Pages from anywhere else are refused.")
@site_options
@click.option("--token-file", type=FilePath(dir_okay=False, path_type=Path), default=None,
              help="The per-install token non-browser clients send [default: ~/.config/sscard/service.token].")
@click.option("--print-token", is_flag=True, help="Print the token (made when there is none) and exit.")
def serve(reader: str | None, contactless_reader: str | None, port: int, host: str, origins: tuple[str, ...],
          config_path: Path | None, central_url: str | None, token_file: Path | None, print_token: bool) -> None:
    """Serve the card to hospital software on this computer until Ctrl-C or SIGTERM.

    \b
    The reader convention (iReadCardBas, iVerifyPIN, iChangePIN) over HTTP (POST /api/convention)
    and WebSocket (/ws), our JSON API (/api/read, /api/auth, /api/verify-pin, /api/readers; with a
    terminal configuration also /api/register, /api/settle, /api/purchase, /api/refund,
    /api/reconcile, /api/queue), card events (/ws, {"subscribe": "events"}) and the counter page
    at /. docs/service.md has examples. Browser pages must come from an --allow-origin (or this
    service's own page); other clients send the token (Authorization: Bearer TOKEN).
    Examples:
      sscard serve --allow-origin http://his.hospital.local:8080
      sscard serve --reader "Virtual PCD 00 00" --print-token
    """
    from sscard.terminal.cli.security import announce_key_store
    from sscard.terminal.config import find_config
    from sscard.terminal.keystore import open_key_store
    from sscard.terminal.readers import default_reader
    from sscard.terminal.service import ReaderService, default_token_path, load_token

    token = load_token(token_file or default_token_path())
    if print_token:
        click.echo(token)
        return
    config = find_config(config_path)
    with open_key_store(**(config.key_store_args() if config else {"psam": None, "key_file": None}),
                        connect=connect) as keys:
        announce_key_store(keys)
        if config is not None:
            from sscard.terminal.gateway import TEST_CREDENTIALS_WARNING

            if config.central_credentials == "test":
                click.echo(TEST_CREDENTIALS_WARNING, err=True)
        try:
            service = ReaderService(reader=reader or default_reader(), contactless=contactless_reader, keys=keys,
                                    token=token, origins=origins, terminal_no=config.terminal_no if config else 0,
                                    device=config.device if config else "", host=host, port=port, config=config,
                                    central_url=central_url, card_timeout=watchdog.disarm(), exclusive=exclusive())
        except OSError as err:
            raise click.ClickException(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        allowed = ", ".join(origins) or "none (token clients only)"
        click.echo(f"sscard service on {service.url} for the card in {service.reader}; pages allowed: {allowed}",
                   err=True)
        service.serve()
        if service.stuck:  # its worker thread waits on the card for good: the process would never end
            click.echo(f"sscard service stopped, without waiting for a card that does not answer ({service.stuck[0]})",
                       err=True)
            sys.stderr.flush()
            os._exit(0)
    click.echo("sscard service stopped", err=True)


COMMANDS = [serve]
