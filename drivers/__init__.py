"""What carries APDUs: pcsc (pyscard), memory (in-process simulator), vpcd (simulator behind pcscd)."""
from sscard.drivers.connection import Connection

__all__ = ["Connection"]
