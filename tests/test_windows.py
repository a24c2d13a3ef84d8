"""The paths a Windows user takes, run here with the platform patched (docs/pcsc.md and
docs/security.md say what is verified on Windows and what only on paper): the key file checked the
Windows way with no POSIX-only call, the card state read as Windows's enumeration, the simulator's
card pulled by a command on standard input as well as by SIGUSR1."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from sscard.drivers import pcsc
from sscard.terminal import private
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.cli.reader import _commands
from sscard.terminal.cli.signals import Flag
from sscard.terminal.errors import KeyStoreError
from sscard.terminal.keystore import SoftwareKeyStore

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "fixtures" / "keys" / "test-keys.json"


@pytest.fixture
def on_windows(tmp_path, monkeypatch):
    """Windows as far as terminal/private.py can tell, with the POSIX-only calls gone: any of them
    called would be an AttributeError, as on Windows."""
    home = tmp_path / "Users" / "clerk"
    (home / "AppData" / "Local" / "sscard").mkdir(parents=True)
    monkeypatch.setattr(private, "windows", lambda: True)
    monkeypatch.setenv("USERPROFILE", str(home))
    for name in ("geteuid", "getuid", "O_DIRECTORY", "O_NOFOLLOW"):
        monkeypatch.delattr(os, name, raising=False)
    return home


def test_a_key_file_in_the_users_own_folder_loads(on_windows):
    path = on_windows / "AppData" / "Local" / "sscard" / "keys.json"
    shutil.copyfile(BUNDLED, path)
    path.chmod(0o644)  # no mode bits to check on Windows: the profile folder's ACL is the protection
    assert "keys.json" in SoftwareKeyStore.from_file(path).description


def test_a_key_file_outside_the_users_folder_is_refused_saying_where_to_put_it(on_windows, tmp_path):
    path = tmp_path / "shared" / "keys.json"
    path.parent.mkdir()
    shutil.copyfile(BUNDLED, path)
    with pytest.raises(KeyStoreError, match=r"outside your user folder .* Move it to .*AppData.Local.sscard") as err:
        SoftwareKeyStore.from_file(path)
    assert exit_code(err.value) == 12


def test_a_key_file_that_is_a_link_or_a_folder_is_refused(on_windows):
    real = on_windows / "keys.json"
    shutil.copyfile(BUNDLED, real)
    link = on_windows / "AppData" / "Local" / "sscard" / "keys.json"
    link.symlink_to(real)
    with pytest.raises(KeyStoreError, match="symbolic link"):
        SoftwareKeyStore.from_file(link)
    folder = on_windows / "AppData" / "folder.json"
    folder.mkdir()
    with pytest.raises(KeyStoreError, match="not a regular file|Cannot read"):
        SoftwareKeyStore.from_file(folder)


def test_without_userprofile_nothing_can_be_checked(on_windows, monkeypatch):
    monkeypatch.delenv("USERPROFILE")
    with pytest.raises(KeyStoreError, match="USERPROFILE"):
        SoftwareKeyStore.from_file(on_windows / "keys.json")


@pytest.mark.parametrize(("state", "linux", "windows"), [
    (0x0002, True, False),   # pcsc-lite SCARD_ABSENT; on Windows 2 is SCARD_PRESENT
    (0x0034, False, False),  # pcsc-lite present | powered | specific
    (1, False, True),        # Windows SCARD_ABSENT
    (3, True, False),        # Windows SCARD_SWALLOWED: a bit test would say absent
    (5, False, False),       # Windows SCARD_NEGOTIABLE
    (6, True, False),        # Windows SCARD_SPECIFIC (on pcsc-lite 6 holds the absent bit)
])
def test_the_card_state_is_read_the_platforms_way(state, linux, windows):
    assert pcsc.card_absent(state, "linux") is linux
    assert pcsc.card_absent(state, "win32") is windows


def test_the_simulators_commands_on_standard_input():
    """Enter toggles, pull / insert only when it changes something, quit stops, unknown lines said."""
    stop, toggle = Flag(), Flag()
    inserted = [True]
    toggles = []

    class Toggle(Flag):
        def set(self) -> None:
            toggles.append("toggle")
            inserted[0] = not inserted[0]

    _commands(io.StringIO("\ninsert\npull\npull\nINSERT\nnonsense\nquit\ntoggle\n"), stop, Toggle(), lambda: inserted[0])
    # Enter (out), insert (in), pull (out), the second pull nothing, INSERT (in); after quit nothing
    assert toggles == ["toggle"] * 4 and inserted == [True] and stop.is_set()
    stop2 = Flag()
    _commands(io.StringIO(""), stop2, toggle, lambda: True)  # stdin at its end: no command
    assert not stop2.is_set() and not toggle.is_set()
