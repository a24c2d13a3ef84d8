"""The reference central service (DESIGN.md, "The central service"; docs/central-api.md).

A small HTTP server on 127.0.0.1 (standard library) with its own SQLite ledger, for development and
tests: ``sscard central serve``, or :class:`CentralService` in-process. The implementation is in
:mod:`terminal.central.service`; its public names are re-exported here.
"""
from terminal.central.service import (
    GARBAGE,
    MAX_BATCH,
    MODES,
    REQUIRED,
    CentralService,
    Fault,
    Ledger,
    digest,
)

__all__ = ["GARBAGE", "MAX_BATCH", "MODES", "REQUIRED", "CentralService", "Fault", "Ledger", "digest"]
