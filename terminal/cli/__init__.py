"""The ``sscard`` command line (click)."""
from terminal.cli.main import main

__all__ = ["main"]
