"""Virtual cards that remember: a ``sim:`` card keeps what a real chip keeps between sessions.

A real card holds its PIN, its try counters, its lifecycle (activated or not) and its records in
EEPROM: a PIN changed today is the PIN tomorrow, a wrong PIN spends a try for good. The virtual cards
of ``--reader sim:NAME`` and of ``sscard simulate --card NAME`` do the same: their persistent state
is a small JSON file per profile in a per-user state folder, read when the card is powered up (each
command's session) and written after each command that changed it, so a command run after another
finds the card as the other left it, in memory or over vpcd. ``sscard simulate reset [PROFILE]``
restores the factory card (the profile as shipped).

- Where: ``$SSCARD_SIM_STATE``, else ``$XDG_STATE_HOME/sscard/sim``, else
  ``~/.local/state/sscard/sim``; the folder 0700, each file 0600 (the TEST PIN is in it, as in the
  profile), written whole to a temporary file and renamed, so a file is always one card's state.
- Which file: ``NAME.json`` for a bundled profile, ``STEM-HASH.json`` for a profile path (the hash of
  its absolute path). The file names the profile's SHA-256: a profile that changed since starts
  from its factory state again.
- A write that fails (disk full, read-only folder) is the card's EEPROM failing: the command's
  change is undone and the card answers ``65 81`` (memory failure, ISO 7816-4 s5.1.3), which the
  terminal reports in words; nothing is half-remembered.
- A damaged state file is refused when the card is first loaded (ProfileError, exit 12, naming the
  file and the reset command); later, at a power-up, it is logged and the card keeps what it had.
- What a card remembers is its own business (``persistent_state`` / ``restore_state`` of
  :class:`~drivers.simulator.ssc.SSCCard` and
  :class:`~drivers.simulator.oldmedical.OldMedicalCard`); the PSAM and hostile cards
  (``hostile:...``, test chips) start fresh every time.

The Python API (``drivers.simulator.load_card``) still gives fresh cards: tests, the demo and
benchmarks build the cards they need.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sscard.apdu.status import SW
from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator.base import SimulatedCard, WrappedCard

log = logging.getLogger(__name__)

#: the environment variable naming the state folder (tests point it at a fresh folder)
STATE_ENV = "SSCARD_SIM_STATE"
#: the version of the file's layout
FORMAT = 1


@runtime_checkable
class Remembering(Protocol):
    """A chip with state that survives power-down: what it would keep in EEPROM, as JSON values."""

    def persistent_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take ``state`` back (ValueError, TypeError or KeyError when it is not one of its own)."""


def state_folder() -> Path:
    """The folder of the virtual cards' state files (module docstring)."""
    named = os.environ.get(STATE_ENV)
    if named:
        return Path(named)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sscard" / "sim"


class StateFile:
    """The state file of one profile (module docstring)."""

    def __init__(self, name: str, profile: Path) -> None:
        self.profile_name = name
        self.profile_sha256 = hashlib.sha256(profile.read_bytes()).hexdigest()
        self.path = state_folder() / file_name(name, profile)

    def load(self) -> dict[str, Any] | None:
        """The card's saved state, or None (none saved, or saved for another version of the profile).
        ProfileError when the file cannot be read or is not a state file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # nothing saved (no such folder yet)
            return None
        except OSError as err:
            raise ProfileError(f"The saved state of the virtual card {self.profile_name!r} ({self.path}) cannot "
                               f"be read: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise self.damaged("not text") from None
        try:
            saved = json.loads(text)
        except ValueError:
            raise self.damaged("not JSON") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("state"), dict):
            raise self.damaged("not a virtual card's state")
        if saved.get("profile_sha256") != self.profile_sha256:
            log.info("virtual card %s: its profile changed since %s was saved: factory state", self.profile_name,
                     self.path)
            return None
        state: dict[str, Any] = saved["state"]
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write the state whole (temporary file, then rename); OSError when it cannot be written."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {"format": FORMAT, "profile": self.profile_name, "profile_sha256": self.profile_sha256,
                    "test_only": True, "state": state}
        fd, temporary = tempfile.mkstemp(prefix=".state-", dir=folder)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, ensure_ascii=False, indent=1)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def damaged(self, why: str) -> ProfileError:
        return ProfileError(f"The saved state of the virtual card {self.profile_name!r} ({self.path}) is damaged "
                            f"({why}): 'sscard simulate reset {self.profile_name}' restores the factory card")


def file_name(name: str, profile: Path) -> str:
    """``adult.json`` for a bundled profile; ``STEM-HASH.json`` for a profile named by its path."""
    if name == profile.stem and "/" not in name and "\\" not in name and not name.endswith(".json"):
        return f"{name}.json"
    digest = hashlib.sha256(str(profile.resolve()).encode("utf-8")).hexdigest()[:12]
    return f"{profile.stem}-{digest}.json"


class RememberedCard(WrappedCard):
    """A chip whose persistent state lives in a :class:`StateFile` (module docstring)."""

    def __init__(self, inner: SimulatedCard, store: StateFile) -> None:
        if not isinstance(inner, Remembering):
            raise TypeError(f"{type(inner).__name__} keeps no state")
        super().__init__(inner)
        self.chip: Remembering = inner
        self.store = store
        self._saved = self._load(strict=True)

    def _load(self, strict: bool) -> dict[str, Any]:
        """Take the saved state into the chip; what the chip holds then."""
        try:
            state = self.store.load()
            if state is not None:
                try:
                    self.chip.restore_state(state)
                except (KeyError, TypeError, ValueError) as err:
                    raise self.store.damaged(f"{type(err).__name__}: {err}") from None
        except ProfileError as err:
            if strict:
                raise
            log.warning("%s; the card keeps the state it had", err)
        return self.chip.persistent_state()

    def power_up(self) -> None:
        self._saved = self._load(strict=False)  # another process may have used the card since
        super().power_up()

    def execute(self, apdu: bytes) -> bytes:
        reply = super().execute(apdu)
        state = self.chip.persistent_state()
        if state != self._saved:
            try:
                self.store.save(state)
            except OSError as err:
                log.warning("virtual card %s: its state could not be written to %s (%s): the command is undone",
                            self.store.profile_name, self.store.path, err.strerror or err)
                self.chip.restore_state(self._saved)
                self.inner.reset()  # and what it made volatile (a PIN verified): nothing of it stays
                return SW.MEMORY_FAILURE.to_bytes(2, "big")
            self._saved = state
        return reply


def remembered_card(spec: str) -> SimulatedCard:
    """The virtual card a ``sim:`` spec names (a bundled profile name or a profile path, an old medical
    card's profile too), with its saved state; PSAM and ``hostile:`` cards fresh."""
    from sscard.drivers.simulator import STRICT, load_card, strict
    from sscard.drivers.simulator.profile import locate

    if spec.startswith(STRICT):  # the same card, strict: it remembers as the card does
        remembered = remembered_card(spec[len(STRICT):])
        strict(remembered.inner if isinstance(remembered, RememberedCard) else remembered)
        return remembered
    card = load_card(spec)
    if spec.startswith("hostile:") or not isinstance(card, Remembering):
        return card
    return RememberedCard(card, StateFile(spec, locate(spec)))


def reset(spec: str | None = None) -> list[Path]:
    """Forget the saved state of one profile (its factory card next time), or of every profile; the
    files removed."""
    folder = state_folder()
    if spec is None:
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    else:
        from sscard.drivers.simulator.profile import locate

        paths = [folder / file_name(spec, locate(spec))]
    removed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
