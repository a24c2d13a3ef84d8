"""The ``sscard`` command line (click)."""
from sscard.terminal.cli.main import main

__all__ = ["main"]
