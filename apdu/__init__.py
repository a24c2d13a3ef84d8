"""Pure bytes, no I/O: APDUs, status words, TLV codecs, command builders and the card's data items."""
from apdu.command import Command
from apdu.response import Response

__all__ = ["Command", "Response"]
