"""This terminal's credentials at the platform's gateway (docs/platform.md, "Gateway").

The gateway authenticates every request with the institution's ``paasid`` and a signature made with
its secret token (:func:`message.envelope.gateway_headers`). Where they come from (``[central]
credentials`` in the configuration, like ``[keys] store``):

- ``file:PATH``: a JSON file ``{"kind": "gateway-credentials", "paasid": ..., "token": ...}`` readable
  by its owner only (:func:`terminal.private.read_private_file`, as the key file);
- ``test``: the bundled TEST credentials of ``fixtures/platform/institutions.json``, public, which
  only the virtual platform accepts; a warning says so, as for the TEST keys.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from sscard.message.envelope import Credentials, MessageError
from sscard.terminal.errors import ConfigError
from sscard.terminal.private import read_private_file

CREDENTIALS_KIND = "gateway-credentials"
MAX_CREDENTIALS_BYTES = 4096
TEST_CREDENTIALS = "platform/institutions.json"
TEST_CREDENTIALS_WARNING = ("Warning: using the TEST gateway credentials (fixtures/platform/institutions.json): "
                            "only the virtual platform accepts them. Set [central] credentials = \"file:PATH\" "
                            "for a real platform.")


class CredentialsError(ConfigError):
    """The gateway credentials cannot be used."""


def test_credentials(institution: str) -> Credentials:
    """The bundled TEST credentials of ``institution`` (:class:`CredentialsError` when it has none)."""
    data = json.loads((resources.files("sscard.fixtures") / TEST_CREDENTIALS).read_text(encoding="utf-8"))
    if data.get("test_only") is not True:
        raise CredentialsError("The bundled institutions file is not marked test-only: refusing it")
    for entry in data["institutions"]:
        if entry["fixmedins_code"] == institution:
            return Credentials(entry["paasid"], entry["token"])
    raise CredentialsError(f"No TEST gateway credentials for institution {institution}: the virtual platform "
                           "knows the institutions of fixtures/platform/institutions.json")


def credentials_from_file(path: str | Path) -> Credentials:
    """The credentials in ``path``, refused unless only its owner can read it (exit 12)."""
    path = Path(path)
    raw = read_private_file(path, "credentials file", MAX_CREDENTIALS_BYTES, CredentialsError)
    if len(raw) > MAX_CREDENTIALS_BYTES:
        raise CredentialsError(f"The credentials file {path} is too large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CredentialsError(f"The credentials file {path} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("kind") != CREDENTIALS_KIND:
        raise CredentialsError(f"The credentials file {path} is not gateway credentials "
                               f"(\"kind\": \"{CREDENTIALS_KIND}\")")
    try:
        return Credentials(data.get("paasid"), data.get("token"))  # type: ignore[arg-type]
    except MessageError as err:
        raise CredentialsError(f"The credentials file {path}: {err}") from None


def load_credentials(spec: str, institution: str) -> tuple[Credentials, bool]:
    """``spec`` (``test`` or ``file:PATH``) -> (credentials, whether they are the TEST ones)."""
    if spec == "test":
        return test_credentials(institution), True
    if spec.startswith("file:") and len(spec) > 5:
        return credentials_from_file(spec[5:]), False
    raise CredentialsError(f'[central] credentials must be "file:PATH" or "test", not {spec!r}')
