"""What carries APDUs: pcsc (pyscard), memory (in-process simulator), vpcd (simulator behind pcscd)."""
from drivers.connection import Connection

__all__ = ["Connection"]
