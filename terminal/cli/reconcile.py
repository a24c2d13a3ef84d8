"""``sscard reconcile``: day-end reconciliation with the platform (terminal/reconcile.py, docs/platform.md)."""
from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import click

from sscard.apdu.errors import SSCardError
from sscard.message.envelope import CST, INSUTYPES
from sscard.terminal.cli.counter import say_on_stderr
from sscard.terminal.cli.options import FilePath, site_options
from sscard.terminal.cli.output import json_option, print_json
from sscard.terminal.config import load_config
from sscard.terminal.flows.common import open_platform
from sscard.terminal.queue import Outbox


class UnbalancedError(SSCardError):
    """The day does not balance: the journal and the platform differ."""


@click.command()
@site_options
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The day to reconcile (yyyy-mm-dd) [default: today, Beijing time].")
@click.option("--queue", "-q", "extra", multiple=True, type=FilePath(dir_okay=False, exists=True, path_type=Path),
              help="Another terminal's journal of this institution to count too (repeat for each).")
@json_option("Print the reconciliation as JSON on stdout.")
def reconcile(config_path: Path | None, central_url: str | None, day: dt.datetime | None, extra: tuple[Path, ...],
              as_json: bool) -> None:
    """Day-end reconciliation (3201): this terminal's settlements against the platform's.

    \b
    Per insurance type and clearing type, the journal's totals (amounts and count of the settlements
    that stand) are sent to the platform, which says whether its own agree. Exit 0: balanced; exit 18:
    not balanced, and the settlements that differ are named (settled on one side only, or with other
    amounts); 14: the platform could not be asked.
    """
    from sscard.terminal.reconcile import reconcile as run

    config = load_config(config_path)
    when = (day.date() if day else dt.datetime.now(CST).date())
    with contextlib.ExitStack() as stack:
        outbox = stack.enter_context(Outbox(config.queue_path, config.station))
        others = [stack.enter_context(Outbox(path, create=False)) for path in extra]
        platform = stack.enter_context(open_platform(config, outbox, central_url, say_on_stderr))
        result = run(platform, [outbox, *others], when)
    error = None if result.balanced else UnbalancedError(
        f"The day {when} does not balance: {sum(len(line.differences) for line in result.lines)} settlements "
        "differ (listed above); ask the platform's help desk with them.")
    if as_json:
        print_json(result.to_dict(), error=error)
    else:
        click.echo(f"Reconciliation of {when} with the platform: {'balanced' if result.balanced else 'NOT BALANCED'}")
        for line in result.lines:
            if not line.totals.count and line.agreed:
                continue
            state = "agreed" if line.agreed else f"DIFFERS ({line.description})"
            click.echo(f"  {line.insutype} {INSUTYPES[line.insutype][:40]:40}  clearing {line.clr_type}: "
                       f"{line.totals.count} settlements, {line.to_dict()['medfee_sumamt']} yuan  {state}")
            for difference in line.differences:
                click.echo(f"    {difference.text()}")
    if error:
        raise error

COMMANDS = [reconcile]
