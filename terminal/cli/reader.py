"""Reader commands: ``sscard readers``, ``sscard simulate`` and ``sscard watch`` (docs/pcsc.md)."""
from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from sscard.drivers.errors import NoReaderError, ProfileError, ServiceNotRunningError
from sscard.message.envelope import CST, iso_time
from sscard.terminal.cli import signals
from sscard.terminal.cli.options import MAX_READER_SPEC, Count, Seconds, Text
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.readers import atr_text

DEFAULT_PORT = 35963


@click.command()
@json_option("Print JSON on stdout.")
def readers(as_json: bool) -> None:
    """List the PC/SC readers, whether a card is in each, and its ATR.

    The index shown is what --reader takes (a name, a unique part of it or the card's ATR work too).
    Exit code 3 when the PC/SC service is not running or there is no reader.
    """
    from sscard.drivers import pcsc

    statuses = pcsc.reader_status()
    if not statuses:
        raise NoReaderError()
    if as_json:
        rows = [
            {"index": i, "reader": s.name, "card": s.present, "atr": atr_text(s.atr),
             "mute": s.mute, "in_use": s.in_use, "exclusive": s.exclusive}
            for i, s in enumerate(statuses)
        ]
        print_json(rows)
        return
    width = max(len(s.name) for s in statuses)
    for i, s in enumerate(statuses):
        if not s.present:
            state = "no card"
        elif s.mute:
            state = "card not responding (wrong way round?)"
        else:
            state = f"card  ATR {atr_text(s.atr)}"
            if s.exclusive:
                state += "  (in exclusive use by another program)"
        click.echo(f"{i}  {s.name:<{width}}  {state}")


def _load(spec: str) -> Any:
    try:
        from sscard.drivers.simulator.state import remembered_card
    except ImportError as err:
        raise ProfileError("The card simulator is not available in this installation") from err
    return remembered_card(spec)


@click.group(invoke_without_command=True)
@click.option("--card", "cards", multiple=True, metavar="PROFILE",
              help="Card profile: a bundled name (adult, minority, ...) or a JSON file. Repeat for several slots.")
@click.option("--port", "ports", multiple=True, type=Count(1, 65535), metavar="PORT",
              help=f"vpcd port of each card, in order (default {DEFAULT_PORT}, {DEFAULT_PORT + 1}, ...).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where pcscd's vpcd driver listens.")
@click.option("--remove-after", type=Count(0), default=None, metavar="N",
              help="Pull each card out when its command after N APDUs arrives (tests removal mid-read).")
@click.pass_context
def simulate(ctx: click.Context, cards: tuple[str, ...], ports: tuple[int, ...], host: str,
             remove_after: int | None) -> None:
    """Insert virtual social security cards into pcscd's virtual readers (vsmartcard-vpcd).

    Each card connects to vpcd (port 35963 is "Virtual PCD 00 00", 35964 "Virtual PCD 00 01") and
    every PC/SC program sees it: sscard, opensc-tool, pcsc_scan. Start pcscd before or after: the
    cards keep trying. Runs until Ctrl-C, SIGTERM or 'quit' on standard input, which remove the cards
    cleanly. SIGUSR1 pulls the cards out and puts them back in. Where there is no SIGUSR1 (Windows), or
    standard input is a pipe, commands on standard input do it: Enter (or 'toggle'), 'pull', 'insert',
    'quit'.

    A virtual card remembers, as a chip does: its PIN, tries, activation and records carry over from
    command to command, over vpcd and with --reader sim:NAME alike, until 'sscard simulate reset'.

    \b
    Examples:
      sscard simulate --card adult
      sscard simulate --card adult --card fixtures/cards/minority.json
      kill -USR1 <pid>      # remove / re-insert
      sscard simulate reset adult   # the factory card again
    """
    if ctx.invoked_subcommand is not None:
        if cards or ports or remove_after is not None:
            raise click.UsageError(f"'simulate {ctx.invoked_subcommand}' takes no --card, --port or --remove-after")
        return
    if not cards:
        raise click.UsageError("Missing option '--card': which card profile to insert")
    from sscard.drivers.vpcd import VpcdClient, reader_name

    if len(ports) > len(cards):
        raise click.UsageError("more --port than --card options")
    ports = ports + tuple(DEFAULT_PORT + i for i in range(len(ports), len(cards)))
    if len(set(ports)) != len(ports):
        raise click.UsageError("two cards on the same port")
    clients = [
        VpcdClient(_load(spec), host=host, port=port, remove_after=remove_after, name=f"{spec} @ {reader_name(port)}")
        for spec, port in zip(cards, ports)
    ]
    stop, toggle = signals.Flag(), signals.Flag()  # set by signal handlers: no threading.Event
    handled = {signal.SIGINT: stop, signal.SIGTERM: stop}
    pull_signal = getattr(signal, "SIGUSR1", None)  # POSIX only: Windows has the commands on stdin
    if pull_signal is not None:
        handled[pull_signal] = toggle
    inserted = lambda: all(client.inserted for client in clients)  # noqa: E731
    if pull_signal is None or not sys.stdin.isatty():  # a background job reading its terminal is stopped (SIGTTIN)
        threading.Thread(target=_commands, args=(sys.stdin, stop, toggle, inserted), name="simulate-commands",
                         daemon=True).start()
    with signals.on_signals(handled):
        _simulate(clients, host, stop, toggle)
    click.echo("cards removed, simulator stopped", err=True)


#: what ``sscard simulate`` reads on standard input, one command a line
STDIN_COMMANDS = {"": "toggle", "toggle": "toggle", "pull": "pull", "remove": "pull", "insert": "insert",
                  "quit": "quit", "stop": "quit"}


def _commands(stdin: Any, stop: signals.Flag, toggle: signals.Flag, inserted: Callable[[], bool]) -> None:
    """The simulator's commands on standard input, for every platform (Windows has no SIGUSR1): an
    empty line (Enter) or ``toggle`` pulls the cards out or puts them back, ``pull`` / ``insert`` do
    only that, ``quit`` stops. Standard input at its end (``< /dev/null``, a closed pipe): no commands."""
    try:
        for line in stdin:
            command = STDIN_COMMANDS.get(line.strip().lower())
            if command is None:
                click.echo(f"unknown command {line.strip()[:40]!r}: Enter or 'toggle', 'pull', 'insert', 'quit'", err=True)
            elif command == "quit":
                stop.set()
                return
            elif command == "toggle" or (command == "pull") == inserted():
                toggle.set()
    except (OSError, ValueError):  # standard input closed under us
        return


@simulate.command("reset")
@click.argument("profile", required=False)
@json_option()
def simulate_reset(profile: str | None, as_json: bool) -> None:
    """Restore the factory card: forget what the virtual card PROFILE (a bundled name or a profile
    file) remembers (PIN, tries, activation, records); every virtual card without PROFILE."""
    from sscard.drivers.simulator.state import reset, state_folder

    try:
        removed = reset(profile)
    except OSError as err:
        raise ProfileError(f"The saved state in {state_folder()} cannot be removed: {err.strerror or err}") from None
    if as_json:
        print_json({"profile": profile, "reset": [path.name for path in removed], "folder": str(state_folder())})
        return
    which = f"the virtual card {profile!r}" if profile else "every virtual card"
    click.echo(f"{which}: factory state{'' if removed else ' (it had remembered nothing)'}")


def _simulate(clients: list[Any], host: str, stop: signals.Flag, toggle: signals.Flag) -> None:
    """Run the vpcd clients until ``stop``; ``toggle`` takes the cards out or puts them back."""
    try:
        for client in clients:
            client.start()
            click.echo(f"{client.name}: waiting for pcscd's vpcd on {host}:{client.port}", err=True)
        shown = [False] * len(clients)
        while not stop.wait(0.1):
            if toggle.is_set():
                toggle.clear()
                for client in clients:
                    state = "inserted" if client.toggle() else "removed (SIGUSR1 or Enter to re-insert)"
                    click.echo(f"{client.name}: {state}", err=True)
            for i, client in enumerate(clients):
                if client.connected.is_set() != shown[i]:
                    shown[i] = client.connected.is_set()
                    click.echo(f"{client.name}: {'card in the reader' if shown[i] else 'card out of the reader'}", err=True)
    finally:
        for client in clients:
            client.stop()


@click.command()
@click.option("--reader", "-r", "spec", default=None, metavar="SPEC", type=Text(MAX_READER_SPEC),
              help="Only the readers it names (index, name or part of one, or the ATR of the card in it); exit 3 if none.")
@click.option("--count", type=Count(1), default=None, metavar="N",
              help="Stop after N insertions/removals.")
@click.option("--timeout", type=Seconds(0, 86400 * 366), default=None, metavar="S",
              help="Stop after S seconds.")
@json_option("One JSON object per event on stdout, one per line.", stream=True)
def watch(spec: str | None, count: int | None, timeout: float | None, as_json: bool) -> None:
    """Print card insertions and removals as they happen, per reader, with the ATR.

    Cards already in a reader are shown as "present" (not counted). Survives a restart of the PC/SC
    service: it waits for pcscd to come back and reports what changed meanwhile. Exit 0 when --count
    events were seen or at --timeout.
    """
    from sscard.drivers import pcsc

    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    wanted = _reader_filter(spec)
    click.echo("watching readers (Ctrl-C to stop)", err=True)
    for event in pcsc.watch(poll_s=0.2 if deadline else 0.5):
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"timeout after {timeout:g} s", err=True)
            break
        if event.kind == pcsc.TICK:
            continue
        if event.kind in (pcsc.SERVICE_LOST, pcsc.SERVICE_BACK):
            msg = "PC/SC service not running: waiting for it" if event.kind == pcsc.SERVICE_LOST else "PC/SC service back"
            click.echo(msg, err=True)
            continue
        if not wanted(event.reader):
            continue
        stamp = iso_time(dt.datetime.now(CST), "milliseconds")
        if as_json:
            print_json({"time": stamp, "event": event.kind, "reader": event.reader, "atr": atr_text(event.atr)},
                       line=True)
        else:
            click.echo(f"{stamp}  {event.kind:<8}  {event.reader}  {atr_text(event.atr) or ''}".rstrip())
        sys.stdout.flush()
        if event.kind != pcsc.PRESENT:
            seen += 1
            if count is not None and seen >= count:
                break


def _reader_filter(spec: str | None) -> Callable[[str], bool]:
    """A predicate on reader names for ``watch --reader``: an index, a name or a part of one (every
    reader it names is watched), or the ATR of the card in a reader. What it names must be plugged in
    when the watch starts (else the error every command gives, exit 3, listing the readers); a part
    of a name then matches by name, so a reader unplugged and plugged in again is still watched. With
    the PC/SC service not running yet, a part of a name is matched as readers appear."""
    if spec is None:
        return lambda name: True
    from sscard.drivers import pcsc

    exact = spec.strip().isdigit() or pcsc.parse_atr(spec) is not None  # an index, or the ATR of the card in it
    try:
        with pcsc.Context() as context:
            if not exact and any(spec.lower() in name.lower() for name in context.readers()):
                return lambda name: spec.lower() in name.lower()  # each reader it names is watched
            target = pcsc.resolve(spec, context)  # else the error every command gives
    except ServiceNotRunningError:
        if exact:
            raise
        return lambda name: spec.lower() in name.lower()
    return lambda name: name == target


COMMANDS: list[click.Command] = [readers, simulate, watch]
