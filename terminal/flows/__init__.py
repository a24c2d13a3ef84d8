"""The counter flows, one module per role (docs/design.md items 4-7; docs/flows.md):

- :mod:`terminal.flows.desk`: hospital registration desk (registration, activation by first registration);
- :mod:`terminal.flows.pharmacy`: dual-card insert (old medical card -> social security card) and purchases;
- :mod:`terminal.flows.bank`: bank counter activation (ID document, new PIN, unblock with a MAC);
- :mod:`terminal.flows.kiosk`: self-service inquiry.

Each takes connections, a :class:`terminal.flows.common.Site` (queue and key store) and a
:class:`terminal.flows.common.Clerk`, and runs unchanged on a real reader, pcscd's virtual readers and
the in-memory simulator.
"""
from sscard.terminal.flows.common import Clerk, PaymentRefusedError, RefusedError, ScriptedClerk, Site

__all__ = ["Clerk", "PaymentRefusedError", "RefusedError", "ScriptedClerk", "Site"]
