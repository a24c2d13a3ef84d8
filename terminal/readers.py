"""Which reader a command talks to: ``--reader`` specs -> a Connection.

- none given: ``$SSCARD_READER``, else the built-in virtual card ``sim:adult`` (in memory), so every
  command works on a machine with no reader;
- ``sim:PROFILE``: the in-memory simulator with a bundled profile name or a profile file path (an
  old medical insurance card for an ``"kind": "old-medical"`` profile, docs/old-medical-card.md),
  which remembers its PIN, tries, activation and records from command to command
  (drivers/simulator/state.py);
- anything else: a PC/SC reader by index ("0"), name (or a unique part of it) or the card's ATR in hex,
  as ``opensc-tool -r`` takes them.

PC/SC connections are shared (other programs may use the reader between our transactions) unless
``exclusive`` is asked for (``sscard --exclusive``: terminal/cli/options.py :func:`connect`).
"""
from __future__ import annotations

import os

from sscard.drivers.connection import Connection

DEFAULT_READER = "sim:adult"
SIM_PREFIX = "sim:"


def atr_text(atr: bytes | None) -> str | None:
    """An ATR as every output shows it (docs/json.md): hex bytes in capitals with spaces, as pcsc_scan
    and opensc-tool print it (``3B 6D 00 ...``); None for no card."""
    return atr.hex(" ").upper() if atr else None


def default_reader() -> str:
    """The reader used when none is given: ``$SSCARD_READER`` or the built-in virtual card."""
    return os.environ.get("SSCARD_READER") or DEFAULT_READER


def open_connection(spec: str | None = None, exclusive: bool = False) -> Connection:
    """Connect to the card in the reader ``spec`` names (see module docstring)."""
    spec = spec or default_reader()
    if spec.startswith(SIM_PREFIX):
        from sscard.drivers.memory import MemoryConnection
        from sscard.drivers.simulator.state import remembered_card

        return MemoryConnection(remembered_card(spec[len(SIM_PREFIX):]), name=spec)
    from sscard.drivers import pcsc

    return pcsc.connect(spec, exclusive=exclusive)
