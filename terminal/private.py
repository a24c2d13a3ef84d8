"""Files only their owner may read: the master-key file and the platform's gateway credentials are
refused otherwise; the files this terminal writes that hold personal data or secrets (the record
journal, the configuration, the platform's ledger, the service token) are made that way.

docs/security.md, "Stolen keys": a file holding a secret is refused unless no other user can read it
or put a file of their own in its place. :func:`read_private_file` is the one check, for every such file.
docs/security.md, "Other users of the counter PC": :func:`private_folder` and :func:`create_private_file`
make folders 0700 and files 0600 whatever the umask; :func:`warn_if_shared` says when an existing
one is open to others.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from pathlib import Path

from sscard.apdu.errors import SSCardError

log = logging.getLogger(__name__)


def windows() -> bool:
    """Whether the terminal runs on Windows, where files have no owner and mode bits to check."""
    return sys.platform == "win32"


def private_folder(folder: Path) -> None:
    """Make ``folder`` and each missing folder above it with mode 0700 (the umask can only take bits
    away); folders that exist are left as they are. OSError when one cannot be made."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:  # made by another process meanwhile
            pass


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 in a folder made 0700 (:func:`private_folder`); False when it
    exists already (left untouched). OSError when it cannot be made."""
    private_folder(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def publish(temporary: Path, path: Path) -> bool:
    """Put the finished file ``temporary`` in place at ``path`` in one step, never over a file there:
    a hard link (atomic, fails when ``path`` exists), else, on a file system without hard links, a
    rename after a look (a second process could slip in between: the last one's file stays). True when
    ours is the one at ``path``; ``temporary`` is left for the caller to remove."""
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (FAT, some network shares)
        if os.path.lexists(path):
            return False
        try:
            os.rename(temporary, path)
        except FileExistsError:  # Windows: another process's file came first
            return False
        return True


def warn_if_shared(path: Path, what: str) -> bool:
    """Warn (log, shown on stderr) when other users of this computer may read or write the ``what`` at
    ``path``, which holds personal data or secrets: it was made before this check, or by hand. True
    when it was warned about. Not on Windows (access there is the folder's ACL:
    :func:`read_private_file_windows`)."""
    if windows():
        return False
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warning("the %s %s can be read by other users of this computer (mode %04o): run 'chmod 600 %s'",
                what, path, mode, path)
    return True


def read_private_file(path: Path, what: str, limit: int, error: type[SSCardError]) -> bytes:
    """The bytes of the ``what`` (e.g. "key file") at ``path``, at most ``limit`` + 1 of them (the caller
    refuses a longer file). On Windows: :func:`read_private_file_windows`. Elsewhere raises ``error``
    unless all of these hold:

    - the file is a regular file (not a symbolic link, FIFO, device or folder), opened without
      blocking and without following a link;
    - it belongs to the user running the terminal (``st_uid == os.geteuid()``);
    - neither group nor others can read or write it (``mode & 0o077 == 0``: ``chmod 600``);
    - its folder, and every folder above it, belongs to root or to that user and is not writable
      by group or others (a world-writable folder above with the sticky bit, like ``/tmp``, is
      allowed: there, nobody can rename what they do not own). A folder reached through a
      symbolic link is checked where it really is, and so is the folder that holds the link.
    """
    if windows():
        return read_private_file_windows(path, what, limit, error)
    try:
        folder = _real_folder(path)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise error(f"Cannot open the folder of the {what} {path}: {err.strerror}") from None
    try:
        # the folder checked is the one the file is opened from (same device and inode)
        try:
            opened, to_check = os.fstat(dir_fd), _folders_to_check(path, folder)
        except OSError as err:  # the working folder vanished, a folder unreadable
            raise error(f"Cannot check the folders of the {what} {path}: {err.strerror}") from None
        _check_folders(path, what, folder, opened, to_check, error)
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(path.name, flags, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise error(
                    f"The {what} {path} is a symbolic link: refused. Give the path of the {what} itself."
                ) from None
            raise error(f"Cannot open the {what} {path}: {err.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"The {what} {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise error(
                f"The {what} {path} belongs to another user (uid {info.st_uid}): refused. "
                f"The {what} must belong to the user who runs the terminal (uid {os.geteuid()})."
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise error(
                f"The {what} {path} can be read or written by other users (mode {mode:04o}): "
                f"refused. Run 'chmod 600 {path}' as its owner, then try again."
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise error(f"Cannot read the {what} {path}: {err.strerror}") from None
    finally:
        os.close(fd)


def read_private_file_windows(path: Path, what: str, limit: int, error: type[SSCardError]) -> bytes:
    """The Windows way (docs/security.md, "Windows"; written from Microsoft's documentation, not run
    on Windows here): a file's access is its ACL, which the standard library cannot read. A user's
    profile folder (``%USERPROFILE%``) is created with an ACL that lets in that user, SYSTEM and the
    Administrators only, and the files made in it inherit it; so the file must be a regular file, not
    a link, whose real path is inside the profile folder of the user running the terminal. Anything
    else is refused with where to put it."""
    profile = os.environ.get("USERPROFILE")
    if not profile:
        raise error(f"Cannot check who may read the {what} {path}: %USERPROFILE% is not set")
    home = Path(os.path.realpath(profile))
    real = Path(os.path.realpath(path))
    if os.path.islink(path):
        raise error(f"The {what} {path} is a symbolic link: refused. Give the path of the {what} itself.")
    if home not in real.parents:
        raise error(f"The {what} {path} is outside your user folder {home}, where only you can read it: "
                    f"refused. Move it to {home / 'AppData' / 'Local' / 'sscard'} and try again.")
    try:
        info = os.stat(real)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"The {what} {path} is not a regular file")
        with open(real, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise error(f"Cannot read the {what} {path}: {err.strerror}") from None


def _real_folder(path: Path) -> str:
    """The real folder of a file: its parent with every symbolic link resolved."""
    return os.path.realpath(path.parent)


def _folders_to_check(path: Path, folder: str) -> list[str]:
    """Every folder whose owner or writers could swap the file: the real folder and its ancestors,
    and, for each symbolic link on the path as given, the real folder holding the link and its
    ancestors (whoever can write there can point the link elsewhere)."""
    seen: dict[str, None] = {}

    def chain(start: str) -> None:
        current = start
        while True:
            seen.setdefault(current, None)
            parent = os.path.dirname(current)
            if parent == current:
                return
            current = parent

    chain(folder)
    prefix = Path(os.sep)
    for part in (Path.cwd() / path.parent).parts[1:]:  # as given, ".." and links unresolved
        prefix = prefix / part
        if os.path.islink(prefix):
            chain(os.path.realpath(prefix.parent))
    return list(seen)


def _check_folders(path: Path, what: str, folder: str, opened: os.stat_result, folders: list[str],
                   error: type[SSCardError]) -> None:
    """Refuse a file whose folders others could write (see :func:`read_private_file`): ``folders`` from
    :func:`_folders_to_check`, ``opened`` the status of the folder opened."""
    me = os.geteuid()
    for directory in folders:
        try:
            info = os.stat(directory)
        except OSError as err:
            raise error(f"Cannot check the folder {directory} of the {what} {path}: {err.strerror}") from None
        if directory == folder and (info.st_dev, info.st_ino) != (opened.st_dev, opened.st_ino):
            raise error(f"The folder {directory} of the {what} {path} changed while it was checked: refused")
        if info.st_uid not in (0, me):
            raise error(
                f"The folder {directory} of the {what} {path} belongs to another user (uid {info.st_uid}): "
                f"refused, since that user could replace the {what}. Keep the {what} in a folder of "
                "your own or of root."
            )
        mode = stat.S_IMODE(info.st_mode)
        sticky_above = directory != folder and mode & stat.S_ISVTX
        if mode & 0o022 and not sticky_above:
            remedy = (f"Move the {what} into a folder of its own ('mkdir -m 700 FOLDER'), then try again."
                      if mode & stat.S_ISVTX else  # a shared folder such as /tmp: do not chmod it
                      f"Run 'chmod go-w {directory}' as its owner, or move the {what} into a folder of its own.")
            raise error(
                f"The folder {directory} of the {what} {path} can be written by other users (mode {mode:04o}): "
                f"refused, since they could replace the {what}. {remedy}"
            )
