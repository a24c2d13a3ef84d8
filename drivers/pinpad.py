"""An in-memory PIN pad reader: a simulated chip in a reader with a keypad (PC/SC part 10,
apdu/part10.py), for tests and development.

``PinPadConnection(card, typed=["246810"])``: the reader lists ``FEATURE_VERIFY_PIN_DIRECT``; each
VERIFY it is asked to do takes the next of ``typed`` as the digits the holder pressed (``CANCEL`` for
the cancel key, ``TIMEOUT`` for no key in time), builds the VERIFY from the command template the way
the structure says (BCD, the block's length) and answers the card's status word. The PIN never
reaches the computer: the terminal sees only the status word, as with a real PIN pad.
"""
from __future__ import annotations

from sscard.apdu import part10
from sscard.apdu.pin import PINFormatError, pin_to_bcd
from sscard.apdu.status import SW
from sscard.drivers.errors import TransportError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator.base import SimulatedCard

#: what the holder can do at the keypad besides typing digits
CANCEL, TIMEOUT = "cancel", "timeout"
#: the control code this reader gives its VERIFY PIN DIRECT feature (any value: readers pick theirs)
VERIFY_PIN_DIRECT_CODE = 0x42330006


class PinPadConnection(MemoryConnection):
    """A simulated card in a PIN pad reader (module docstring)."""

    def __init__(self, card: SimulatedCard, typed: list[str] | None = None, name: str = "memory PIN pad") -> None:
        super().__init__(card, name=name)
        self.typed = list(typed or [])
        #: the PIN_VERIFY_STRUCTUREs received, for tests
        self.requests: list[part10.VerifyRequest] = []

    def features(self) -> dict[int, int]:
        return {part10.FEATURE_VERIFY_PIN_DIRECT: VERIFY_PIN_DIRECT_CODE}

    def control(self, code: int, data: bytes) -> bytes:
        if code != VERIFY_PIN_DIRECT_CODE:
            raise TransportError(f"The reader does not know control code {code:08X}")
        request = part10.parse_verify_pin_structure(data)
        self.requests.append(request)
        if not self.typed or self.typed[0] == TIMEOUT:
            self.typed[:1] = []
            return SW.PINPAD_TIMEOUT.to_bytes(2, "big")
        pressed = self.typed.pop(0)
        if pressed == CANCEL:
            return SW.PINPAD_CANCELLED.to_bytes(2, "big")
        if request.format_string & 0x03 != 0x01:  # only the BCD format is built by this reader
            return (0x6B80).to_bytes(2, "big")  # part 10: invalid parameter in the structure
        if not request.min_digits <= len(pressed) <= request.max_digits:
            return (0x6402).to_bytes(2, "big")  # part 10: the two PIN entries / lengths do not fit
        try:
            block = pin_to_bcd(pressed)
        except PINFormatError:
            return (0x6402).to_bytes(2, "big")
        size = request.block_string & 0x0F
        header = request.template[:4]
        # the reader's own command to the card (not one of the terminal's: untraced), pulled cards seen
        return self._exchange(header + bytes((size,)) + block.ljust(size, b"\xff"))
