"""Pure bytes, no I/O: APDUs, status words, TLV codecs, command builders and the card's data items."""
from sscard.apdu.command import Command
from sscard.apdu.response import Response

__all__ = ["Command", "Response"]
