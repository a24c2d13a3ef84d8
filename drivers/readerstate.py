"""SCardGetStatusChange for reader names of any characters (PC/SC part 5, section 3.1.x).

pyscard passes the reader names of ``SCardGetStatusChange`` to the PC/SC library encoded as ASCII
(its ``_ReaderStateFromTuple``, up to pyscard 2.3 at least): a reader configured as
``德卡 T10 [社保卡]`` (pcscd's ``FRIENDLYNAME``, or a Windows driver's name) makes it raise
UnicodeEncodeError before anything reaches the reader, while listing and connecting to the same
reader work. For such names this module calls the platform's own library through ctypes, with the
layout of its ``SCARD_READERSTATE``:

- pcsc-lite (Linux, the BSDs): ``libpcsclite.so.1``; names in UTF-8, the encoding pcsc-lite lists
  them in; ``DWORD`` and ``SCARDCONTEXT`` are C ``unsigned long``/``long``; ``rgbAtr[33]``
  (``MAX_ATR_SIZE``). Verified here, against pcscd.
- Windows: ``winscard.dll``'s wide-character ``SCardGetStatusChangeW``; ``DWORD`` 32 bits,
  ``SCARDCONTEXT`` pointer-sized, ``rgbAtr[36]``. Written from the Windows SDK's winscard.h; its
  struct layout is checked by a test, the call itself only on paper (docs/pcsc.md).
- macOS's PC/SC framework packs its structures differently: not supported there (a clear error).

:func:`get_status_change` answers as pyscard does: ``(hresult, [(name, event_state, atr), ...])``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any

from sscard.drivers.errors import ReaderError

#: pcsc-lite's MAX_ATR_SIZE; Windows's rgbAtr holds 36 bytes
PCSCLITE_ATR_SIZE = 33
WINDOWS_ATR_SIZE = 36

States = list[tuple[str, int, list[int]]]


def needs_native(names: list[str]) -> bool:
    """Whether pyscard cannot pass these reader names (any of them not ASCII)."""
    return not all(name.isascii() for name in names)


def reader_state_type(platform: str = sys.platform) -> type[ctypes.Structure]:
    """The platform's ``SCARD_READERSTATE`` (module docstring)."""
    if platform == "win32":
        dword: Any = ctypes.c_uint32
        name: Any = ctypes.c_wchar_p
        atr_size = WINDOWS_ATR_SIZE
    elif platform == "darwin":
        raise ReaderError("Reader names that are not plain ASCII are not supported on macOS: rename the reader")
    else:
        dword, name, atr_size = ctypes.c_ulong, ctypes.c_char_p, PCSCLITE_ATR_SIZE

    class ReaderState(ctypes.Structure):
        _fields_ = [("szReader", name), ("pvUserData", ctypes.c_void_p), ("dwCurrentState", dword),
                    ("dwEventState", dword), ("cbAtr", dword), ("rgbAtr", ctypes.c_ubyte * atr_size)]

    return ReaderState


@cache
def _function() -> tuple[Any, type[ctypes.Structure]]:
    """The library's SCardGetStatusChange, with its argument types."""
    state = reader_state_type()
    if sys.platform == "win32":
        library = ctypes.WinDLL("winscard.dll")  # type: ignore[attr-defined]
        function = library.SCardGetStatusChangeW
        function.argtypes = [ctypes.c_size_t, ctypes.c_uint32, ctypes.POINTER(state), ctypes.c_uint32]
    else:
        found = ctypes.util.find_library("pcsclite") or "libpcsclite.so.1"
        try:
            library = ctypes.CDLL(found)
        except OSError as err:
            raise ReaderError(f"The PC/SC library ({found}) cannot be loaded: {err}") from None
        function = library.SCardGetStatusChange
        function.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.POINTER(state), ctypes.c_ulong]
    function.restype = ctypes.c_long
    return function, state


def get_status_change(context: int, timeout_ms: int, readers: list[tuple[str, int]]) -> tuple[int, States]:
    """SCardGetStatusChange on ``readers`` ((name, current state) pairs), as pyscard answers it."""
    function, state = _function()
    array = (state * len(readers))()
    for slot, (name, current) in zip(array, readers):
        slot.szReader = name if sys.platform == "win32" else name.encode("utf-8")
        slot.dwCurrentState = current
    hresult = function(context, timeout_ms, array, len(readers))
    answered = [(name, int(slot.dwEventState), list(slot.rgbAtr[:min(int(slot.cbAtr), len(slot.rgbAtr))]))
                for (name, _current), slot in zip(readers, array)]
    return int(hresult) & 0xFFFFFFFF, answered
