"""The journal's integrity check: every record sealed with a key of this terminal kept outside the file
(docs/security.md, "Tampered or stolen queue file").

A record's seal (``mac``) is HMAC-SHA256 (RFC 2104, FIPS 180-4) under the journal key of what never
changes once it is written: its id and msgid, transaction number, time, card, regions and the envelope
(every amount in it). The platform's answer, once stored, has its own seal (``answer_mac``) over the
id, the answer as stored and whether it was an acceptance. A record whose seal does not verify when it
is read (an edited amount, a flipped bit, a forged row, a state of ``sent`` or ``answered`` without a
sealed acceptance) is refused and named; the others are read as before. The other states (pending,
sending, dead, ...) are our own bookkeeping and not sealed.

The key is 32 random bytes (hex) in a file of its own beside the journal (``queue.sqlite.key``), or
where ``$SSCARD_JOURNAL_KEY`` names: made 0600 with the journal (or when a journal from before seals
is sealed), refused like a key file when other users can read it (terminal/private.py), and never
made again for a journal that has one: a missing key is an error naming it (exit 12), not a new key
under which every record would read as damaged. The key goes with its journal (backups, another
window's journal given to ``sscard reconcile --queue``). It stops edits by anyone without the key;
whoever runs as the terminal's own account can read the key, so the file permissions stay necessary.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from sscard.terminal.errors import ConfigError
from sscard.terminal.private import create_private_file, publish, read_private_file

KEY_BYTES = 32
#: the fields of a ``records`` row the record's seal covers, in order
SEALED = ("id", "msgid", "infno", "created_at", "card_sn", "insured_region", "treatment_region", "envelope")


class JournalKeyError(ConfigError):
    """The journal key cannot be read or made (exit 12)."""


def journal_key_path(journal: Path) -> Path:
    """``$SSCARD_JOURNAL_KEY``, else the file beside ``journal`` (module docstring)."""
    named = os.environ.get("SSCARD_JOURNAL_KEY")
    return Path(named) if named else journal.with_name(journal.name + ".key")


class Seal:
    """Seals and checks records with one journal key (module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a journal key is 32 bytes")
        self._key = key

    @classmethod
    def of_journal(cls, journal: Path, *, make: bool = False, path: Path | None = None) -> Seal:
        """The seal of ``journal`` with its key (``path``, else :func:`journal_key_path`); ``make``: a
        new key when there is none (a new journal, or one from before seals), else a missing key is
        :class:`JournalKeyError`."""
        path = path or journal_key_path(journal)
        if not os.path.lexists(path):
            if not make:
                raise JournalKeyError(
                    f"The journal key {path} of the record queue {journal} is missing: its records cannot be "
                    "checked without it. Restore it from a backup (it is kept beside the journal, or where "
                    "$SSCARD_JOURNAL_KEY names)")
            _make_key(path)
        raw = read_private_file(path, "journal key", 2 * KEY_BYTES + 2, JournalKeyError).strip()
        try:
            return cls(bytes.fromhex(raw.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            raise JournalKeyError(f"The journal key {path} is damaged: it is not {KEY_BYTES} bytes in hex. "
                                  "Restore it from a backup: the journal's records cannot be checked without it") from None

    def _mac(self, parts: list[Any]) -> str:
        text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def record(self, row: dict[str, Any] | tuple[Any, ...]) -> str:
        """The seal of a record: ``row`` maps :data:`SEALED` to their values, or holds them in that order."""
        values = [row[name] for name in SEALED] if isinstance(row, dict) else list(row)
        return self._mac(["record", *values])

    def answer(self, key: int, reply: str | None, accepted: bool) -> str | None:
        """The seal of what the platform answered record ``key``: the answer as stored, and whether it
        was an acceptance (the journal's ``sent`` and ``answered`` rest on one). None for no answer and
        no acceptance: nothing to protect."""
        return None if reply is None and not accepted else self._mac(["answer", key, reply, accepted])

    def intact(self, row: dict[str, Any], accepted: bool) -> bool:
        """Whether a row (its :data:`SEALED` fields, ``mac``, ``reply``, ``answer_mac``) is as sealed, an
        ``accepted`` one (its state says the platform accepted it) with a sealed acceptance."""
        mac, answer_mac = row.get("mac"), row.get("answer_mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self.record(row)):
            return False
        expected = self.answer(row["id"], row.get("reply"), accepted)
        if expected is None:
            return answer_mac is None
        return isinstance(answer_mac, str) and hmac.compare_digest(answer_mac, expected)


def _make_key(path: Path) -> None:
    """A new key, written whole under a temporary name and put in place in one step
    (:func:`terminal.private.publish`: two processes making one at once, the other's is read)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    try:
        create_private_file(temporary)
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
        publish(temporary, path)
    except OSError as err:
        raise JournalKeyError(f"Cannot make the journal key {path}: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
