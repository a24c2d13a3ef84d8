"""The virtual national medical insurance platform, for development and tests (docs/platform.md).

A separate server, as the card simulator is a separate chip: it holds insured persons, their accounts
and cards (seeded from ``fixtures/platform/``, TEST data), answers the platform's transactions with
the public interface's field names, enforces the platform's invariants atomically in its SQLite
ledger, authenticates terminals as the gateway does, and can be told to fail, stall, drop or garble
its answers (development only). It shares only :mod:`message.envelope` with the terminal.

- :mod:`central.ledger`: the store and the transactions; :mod:`central.policy`: who pays what;
  :mod:`central.server`: HTTP (Starlette on uvicorn) and :class:`CentralService`.
"""
from sscard.central.ledger import REQUIRED, Forbidden, Ledger, Rejected, Unanswerable, Unsigned, digest
from sscard.central.server import GARBAGE, MAX_BATCH, MODES, BadRequest, CentralService, Fault, parse_request

__all__ = ["GARBAGE", "MAX_BATCH", "MODES", "REQUIRED", "BadRequest", "CentralService", "Fault", "Forbidden",
           "Ledger", "Rejected", "Unanswerable", "Unsigned", "digest", "parse_request"]
