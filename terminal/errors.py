"""The terminal's errors about the card as a whole and its holder, and about the terminal's own
configuration and keys. The tree of every error is in :mod:`apdu.errors`; exit codes in
terminal/cli/exits.py."""
from __future__ import annotations

from sscard.apdu.errors import SSCardError

# --- the card and the holder ---------------------------------------------------------------------

class NotSocialSecurityCardError(SSCardError):
    """This is not a social security card (the SSC application could not be selected)."""


class CardAuthenticationError(SSCardError):
    """The card failed authentication: it may be counterfeit. Do not accept it."""


class ExternalAuthenticationRequiredError(SSCardError):
    """A third-generation card (spec 3.00) shows the holder's data only to a terminal that has
    authenticated itself (EXTERNAL AUTHENTICATE; the reader libraries' -2203)."""


class IdentityMismatchError(SSCardError):
    """The ID document does not match the card: the card does not belong to this person."""


# --- configuration and keys ---------------------------------------------------------------------

class ConfigError(SSCardError):
    """The terminal's configuration is invalid."""


class KeyStoreError(ConfigError):
    """The key store cannot be used (key file or PSAM): ask IT to check the terminal's keys."""
