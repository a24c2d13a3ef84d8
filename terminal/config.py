"""The terminal's configuration file: who this terminal is and where its records go.

A TOML file (read with :mod:`tomllib`) holding the institution code and name, the treatment region,
the terminal number, the default operator, the key store, the queue file and the central service's
URL, plus the site's desk policy. ``sscard config init`` writes :data:`DEFAULT_TOML`, a commented
default. Where it is: ``--config``, else ``$SSCARD_CONFIG``, else
``$XDG_CONFIG_HOME/sscard/terminal.toml`` (``~/.config`` when unset). Project convention
(docs/flows.md, "The terminal's configuration").
"""
from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from sscard.terminal.errors import ConfigError
from sscard.terminal.private import warn_if_shared

if TYPE_CHECKING:
    from sscard.message.envelope import Operator, Station

#: the platform's URL when neither the command nor a configuration names one: the virtual platform
#: (``sscard central serve``)
DEFAULT_CENTRAL = "http://127.0.0.1:8930"
#: the longest configuration file read (the documented one is about 2 KB)
MAX_CONFIG_BYTES = 64 * 1024

#: the commented file ``sscard config init`` writes (:func:`render_default`); every key is read by
#: :func:`parse_config`
TEMPLATE = """\
# sscard terminal configuration (docs/flows.md, "The terminal's configuration").
# Paths are relative to this file's folder unless absolute.

[institution]
# designated institution code (12 capital letters or digits) and name, as the platform knows them
code = "H33030200001"
name = "温州市鹿城区示范诊所"
# treatment region: the 6-digit administrative region code of this site. A card issued elsewhere
# is flagged cross-region (insured region != treatment region).
region = "330300"

[terminal]
# this terminal's number within the institution (1-99), different for every terminal of the
# institution: it keeps their message ids apart (the platform refuses a second device signing in
# with a number in use)
number = {terminal_no}
# this device's identity at the platform (dev_no), made by 'sscard config init'; keep it when the
# file is copied to a new computer, change the number and the device when a terminal is added
device = "{device}"

[operator]
# the clerk signed in at this terminal (the platform's opter and opter_name)
id = "C001"
name = "李收费"

[keys]
# where the card keys come from: "psam:READER" (the PSAM in that PC/SC reader: production),
# "file:PATH" (a software master-key file, chmod 600), "remote" (the platform's key service at
# [central] url: genuine-card checks and third-generation reads without a PSAM, no PIN reload or
# activation) or "test" (the bundled public TEST keys: the simulator and development only)
store = "test"

[queue]
# the local record queue (SQLite); records wait here until they are uploaded
path = "queue.sqlite"

[central]
# the national medical insurance platform (settlements are asked online; records made while it is
# unreachable wait in the journal and are uploaded later)
url = "{central}"
# this institution's gateway credentials: "file:PATH" (a JSON file with paasid and token, chmod 600)
# or "test" (the bundled public TEST credentials: the virtual platform only)
credentials = "test"

[desk]
# does the registration desk ask for the holder's PIN?
require_pin = true
"""

CONFIG_NAME = "terminal.toml"


def new_device() -> str:
    """A device identity no other terminal has: ``DEV-`` and 16 random hex digits."""
    return f"DEV-{secrets.token_hex(8).upper()}"


def render_default(terminal_no: int, device: str) -> str:
    """The commented default configuration for terminal ``terminal_no`` and ``device``."""
    return TEMPLATE.format(terminal_no=int(terminal_no), device=device, central=DEFAULT_CENTRAL)


#: the default configuration as documented (terminal 1, no device yet)
DEFAULT_TOML = render_default(1, "")


def default_queue() -> Path:
    """The journal and queue file when no option, variable or configuration names one:
    ``$XDG_DATA_HOME/sscard/queue.sqlite`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sscard" / "queue.sqlite"


def find_config(path: Path | None) -> TerminalConfig | None:
    """The configuration a command uses: ``path`` (which must exist), else :func:`default_config_path`
    when that file exists, else None (the built-in defaults). An invalid file is a
    :class:`ConfigError` (exit 12)."""
    if path is not None:
        return load_config(path)
    path = default_config_path()
    try:
        present = path.is_file()
    except (OSError, ValueError):  # a path no file can have ($SSCARD_CONFIG): load_config says what is wrong
        present = True
    return load_config(path) if present else None


def configured_queue(config: TerminalConfig | None) -> Path:
    """The journal file ``config`` names, else :func:`default_queue`."""
    return config.queue_path if config else default_queue()


def queue_and_central(path: Path | None, url: str | None,
                      config_path: Path | None) -> tuple[Path, str, TerminalConfig | None]:
    """The journal file and the platform's URL a command uses, and the configuration when one was
    read: each the command's option (or its variable), else the configuration's, else the default."""
    config = find_config(config_path) if path is None or url is None else None
    return (path if path is not None else configured_queue(config),
            url if url is not None else config.central_url if config else DEFAULT_CENTRAL, config)


def default_config_path() -> Path:
    """``$SSCARD_CONFIG``, else ``$XDG_CONFIG_HOME/sscard/terminal.toml`` (``~/.config`` when unset)."""
    if os.environ.get("SSCARD_CONFIG"):
        return Path(os.environ["SSCARD_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "sscard" / CONFIG_NAME


class KeyStoreArgs(TypedDict, total=False):
    """The keyword arguments of :func:`terminal.keystore.open_key_store`."""

    psam: str | None
    key_file: str | Path | None
    #: the platform's key service (``[keys] store = "remote"``: terminal/remotekeys.py)
    remote: RemoteKeys | None


@dataclass(frozen=True)
class RemoteKeys:
    """Where the remote security module is: the platform's URL, this institution's gateway
    credentials (``[central] credentials``) and its code (for the TEST credentials)."""

    url: str
    credentials: str
    institution: str


@dataclass(frozen=True)
class TerminalConfig:
    """Everything a flow needs to know about this terminal (see :data:`DEFAULT_TOML`)."""

    institution_code: str
    institution_name: str
    region: str
    terminal_no: int
    operator_id: str
    operator_name: str
    key_store: str
    queue_path: Path
    central_url: str
    central_credentials: str = "test"
    device: str = ""
    desk_requires_pin: bool = True
    path: Path | None = None

    @property
    def operator(self) -> Operator:
        from sscard.message.envelope import Operator  # here: `sscard read` reads no envelope

        return Operator(self.operator_id, self.operator_name)

    def key_store_args(self) -> KeyStoreArgs:
        """Arguments of :func:`terminal.keystore.open_key_store` for ``key_store``."""
        kind, _, value = self.key_store.partition(":")
        args: KeyStoreArgs = {"psam": value if kind == "psam" else None, "key_file": value if kind == "file" else None}
        if kind == "remote":
            args["remote"] = RemoteKeys(self.central_url, self.central_credentials, self.institution_code)
        return args

    @property
    def station(self) -> Station:
        """This terminal as the platform knows it; :class:`ConfigError` on a malformed code or region."""
        from sscard.message.envelope import MessageError, Station

        try:
            return Station(self.institution_code, self.institution_name, self.region, self.terminal_no,
                           self.operator, dev_no=self.device)
        except MessageError as err:
            raise ConfigError(f"{self.path or 'configuration'}: {err}") from None


def _get(data: dict[str, Any], section: str, key: str, kind: type, where: Path | str,
         default: Any = None) -> Any:
    value = data.get(section, {}).get(key, default) if isinstance(data.get(section, {}), dict) else None
    if value is None:
        raise ConfigError(f"{where}: [{section}] {key} is missing")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: [{section}] {key} must be a {kind.__name__}, not {value!r}")
    return value


def _resolve(base: Path | None, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def parse_config(text: str, path: Path | None = None) -> TerminalConfig:
    """The configuration in ``text`` (TOML); relative paths are taken from ``path``'s folder."""
    where = path or "configuration"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where} is not valid TOML: {err}") from None
    except RecursionError:  # tables or arrays nested thousands deep
        raise ConfigError(f"{where} is nested too deeply to be a configuration") from None
    base = path.resolve().parent if path else None
    store = _get(data, "keys", "store", str, where)
    if store.startswith("file:"):
        store = "file:" + str(_resolve(base, store[5:]))
    elif store not in ("test", "remote") and not (store.startswith("psam:") and len(store) > 5):
        raise ConfigError(f'{where}: [keys] store must be "psam:READER", "file:PATH", "remote" or "test", '
                          f'not {store!r}')
    credentials = _get(data, "central", "credentials", str, where, "test")
    if credentials.startswith("file:") and len(credentials) > 5:
        credentials = "file:" + str(_resolve(base, credentials[5:]))
    elif credentials != "test":
        raise ConfigError(f'{where}: [central] credentials must be "file:PATH" or "test", not {credentials!r}')
    config = TerminalConfig(
        institution_code=_get(data, "institution", "code", str, where),
        institution_name=_get(data, "institution", "name", str, where),
        region=_get(data, "institution", "region", str, where),
        terminal_no=_get(data, "terminal", "number", int, where, 0),
        device=_get(data, "terminal", "device", str, where, ""),
        operator_id=_get(data, "operator", "id", str, where),
        operator_name=_get(data, "operator", "name", str, where),
        key_store=store,
        queue_path=_resolve(base, _get(data, "queue", "path", str, where)),
        central_url=_get(data, "central", "url", str, where),
        central_credentials=credentials,
        desk_requires_pin=_get(data, "desk", "require_pin", bool, where, True),
        path=path,
    )
    config.station  # noqa: B018  (validates the institution code, region and terminal number)
    return config


def load_config(path: str | Path | None = None) -> TerminalConfig:
    """Read the configuration file (:func:`default_config_path` when ``path`` is None).

    A missing or unreadable file is a :class:`ConfigError` telling the clerk to run ``sscard config init``.
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        # O_NONBLOCK: a FIFO named as the configuration is refused below, not waited on for ever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(f"No terminal configuration at {path}: create one with 'sscard config init'") from None
    except OSError as err:
        raise ConfigError(f"The terminal configuration {path} cannot be read: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"The terminal configuration {path} is not a regular file (a device, FIFO or folder)")
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"The terminal configuration {path} is longer than {MAX_CONFIG_BYTES} bytes: "
                              "it is not a configuration")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"The terminal configuration {path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    warn_if_shared(path, "terminal configuration")
    return parse_config(text, path)


def write_default(path: str | Path, force: bool = False, *, terminal_no: int = 1, device: str | None = None) -> Path:
    """Write the default configuration for terminal ``terminal_no`` (a new device identity unless
    ``device`` is given) at ``path``, readable by its owner only (its folder is made, 0700); refuse to
    overwrite unless ``force``.

    The default key store is ``test``: the bundled public TEST keys, which only the simulator's cards
    accept; a production terminal names its PSAM instead.
    """
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite it)")
    if isinstance(terminal_no, bool) or not isinstance(terminal_no, int) or not 1 <= terminal_no <= 99:
        raise ConfigError(f"the terminal number must be 1 to 99, not {terminal_no!r}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_default(terminal_no, device if device is not None else new_device()))
        os.chmod(path, 0o600)
    except OSError as err:
        raise ConfigError(f"Cannot write {path}: {err.strerror or err}") from None
    return path
