"""Pure-bytes cryptography for the social security card: block ciphers, key diversification,
session keys, MACs, SM3, wiping secrets from memory. PIN blocks and the PIN policy are in
:mod:`apdu.pin`.

Used by the card simulator (drivers/simulator) and the terminal alike, so both compute the same
bytes. Where the public record is silent the choice is a project convention, written out in
``docs/crypto.md`` (and recomputed from that document by tests/test_crypto.py).

Block ciphers come from ``cryptography``; nothing here hand-writes a cipher. 2nd-generation cards
use two-key 3DES (TDEA keying option 2, NIST SP 800-67), 3rd-generation cards SM4 (GB/T 32907-2016).
No function logs or puts key, PIN or data bytes into an error message.
"""
from __future__ import annotations

import enum
from hmac import compare_digest as constant_time_equal

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from sscard.apdu.catalogue import card_generation
from sscard.apdu.errors import SSCardError

__all__ = [
    "Algorithm",
    "CryptoError",
    "DIVERSIFICATION_DATA_LENGTH",
    "card_key",
    "constant_time_equal",
    "diversification_data",
    "diversify",
    "mac_3des_full",
    "mac_retail",
    "mac_sm4",
    "pad_method1",
    "pad_method2",
    "pboc_mac",
    "session_key",
    "session_mac",
    "sm3",
    "unpad_method2",
    "wipe",
]


class CryptoError(SSCardError, ValueError):
    """A cryptographic operation got a key, block or cryptogram of the wrong size or form."""


# --- block ciphers -----------------------------------------------------------------------------

class Algorithm(enum.Enum):
    """The card's symmetric algorithm: ``TDES`` on 2nd-generation cards, ``SM4`` on 3rd-generation.

    ``TDES`` is two-key triple DES (NIST SP 800-67 keying option 2: K1 || K2, K3 = K1), 16-byte key,
    8-byte block. ``SM4`` is GB/T 32907-2016: 16-byte key, 16-byte block.
    """

    TDES = "3DES"
    SM4 = "SM4"

    @property
    def block_size(self) -> int:
        """Block length in bytes: 8 (3DES) or 16 (SM4)."""
        return 8 if self is Algorithm.TDES else 16

    @property
    def key_size(self) -> int:
        """Key length in bytes: 16 for both (two-key 3DES; SM4)."""
        return 16

    @property
    def generation(self) -> int:
        """The card generation that uses it (project convention, docs/card-profile.md): 2 (3DES), 3 (SM4)."""
        return 2 if self is Algorithm.TDES else 3

    @classmethod
    def for_spec_version(cls, version: str) -> Algorithm:
        """The algorithm of a card by its EF05 spec version (project convention, docs/card-profile.md):
        ``2.xx`` -> TDES, ``3.xx`` -> SM4."""
        generation = card_generation(version.strip())
        for algorithm in cls:
            if generation == algorithm.generation:
                return algorithm
        raise CryptoError(f"Unknown card specification version {version!r}: expected 2.xx (3DES) or 3.xx (SM4)")

    def check_key(self, key: bytes) -> None:
        """Raise CryptoError unless ``key`` is ``key_size`` bytes."""
        if not isinstance(key, (bytes, bytearray)) or len(key) != self.key_size:
            raise CryptoError(f"A {self.value} key must be {self.key_size} bytes")

    def _cipher(self, key: bytes) -> BlockCipherAlgorithm:
        self.check_key(key)
        if self is Algorithm.TDES:
            # cryptography deprecates 16-byte TripleDES keys: spell keying option 2 out as K1 K2 K1.
            return TripleDES(bytes(key) + bytes(key[:8]))
        return algorithms.SM4(bytes(key))

    def _check_blocks(self, data: bytes) -> None:
        if len(data) == 0 or len(data) % self.block_size:
            raise CryptoError(f"{self.value} data must be a whole number of {self.block_size}-byte blocks")

    def encrypt_block(self, key: bytes, data: bytes) -> bytes:
        """ECB-encrypt whole blocks (SP 800-67 s3 / GB/T 32907-2016 s7.1). CryptoError on bad lengths."""
        self._check_blocks(data)
        enc = Cipher(self._cipher(key), modes.ECB()).encryptor()
        return enc.update(bytes(data)) + enc.finalize()

    def decrypt_block(self, key: bytes, data: bytes) -> bytes:
        """ECB-decrypt whole blocks (SP 800-67 s3 / GB/T 32907-2016 s7.2). CryptoError on bad lengths."""
        self._check_blocks(data)
        dec = Cipher(self._cipher(key), modes.ECB()).decryptor()
        return dec.update(bytes(data)) + dec.finalize()

    def encrypt_cbc(self, key: bytes, data: bytes, iv: bytes) -> bytes:
        """CBC-encrypt whole blocks (NIST SP 800-38A s6.2) with a block-sized IV."""
        self._check_blocks(data)
        _check_iv(iv, self.block_size)
        enc = Cipher(self._cipher(key), modes.CBC(bytes(iv))).encryptor()
        return enc.update(bytes(data)) + enc.finalize()


def _check_iv(iv: bytes, block: int) -> None:
    if not isinstance(iv, (bytes, bytearray)) or len(iv) != block:
        raise CryptoError(f"The initial vector must be {block} bytes")


def _des(key8: bytes) -> BlockCipherAlgorithm:
    """Single DES as TripleDES(K, K, K): EDE with equal keys is DES (SP 800-67 s3.2)."""
    return TripleDES(bytes(key8) * 3)


# --- key diversification (PBOC) -----------------------------------------------------------------

#: length of the diversification data D, for 3DES and SM4 alike (PBOC: 8 bytes of card data)
DIVERSIFICATION_DATA_LENGTH = 8
#: the card identification code's issuing region code: its first 3 bytes, 6 BCD digits (``330300``)
REGION_CODE_LENGTH = 3
#: the bytes of D taken from the end of the code's significant part (before the FF padding)
_SERIAL_PART = DIVERSIFICATION_DATA_LENGTH - REGION_CODE_LENGTH


def diversification_data(card_identification_code: bytes) -> bytes:
    """The 8-byte diversification data D of a card, from its 16-byte identification code (EF05 tag 01),
    the same for 3DES and SM4 keys.

    Project convention (docs/crypto.md, "Key diversification"), from the code's layout
    (docs/reference/card.md, "Data formats": ``330300 D156000005 99110145 FFFFFFFF``, that is, the issuing
    region code in 3 BCD bytes, the RID ``D1 56 00 00 05`` common to all cards, the card's serial,
    ``FF`` padding): D = the region code (first 3 bytes) || the rightmost 5 bytes before the ``FF``
    padding (the serial and the byte before it): ``330300`` || ``05 99110145`` ->
    ``33030005 99110145``. Nothing makes a serial unique across issuing regions, so the region is
    part of D: two cards that differ in either get different keys. A code with no padding gives
    its last 5 bytes; fewer than 8 bytes before the padding (region and tail would overlap) is a
    CryptoError.
    """
    code = bytes(card_identification_code)
    if len(code) != 16:
        raise CryptoError("The card identification code must be 16 bytes")
    significant = code.rstrip(b"\xff")
    if len(significant) < DIVERSIFICATION_DATA_LENGTH:
        raise CryptoError("The card identification code has fewer than 8 bytes before its FF padding")
    return significant[:REGION_CODE_LENGTH] + significant[-_SERIAL_PART:]


def diversify(master_key: bytes, data: bytes, algorithm: Algorithm) -> bytes:
    """Diversify a master key for one card (PBOC 2.0 / JR/T 0025 key derivation, docs/crypto.md).

    D is 8 bytes (:func:`diversification_data`), ~D its bitwise complement, and DK is the ECB
    encryption of D || ~D with the master key: for 3DES (8-byte blocks) the two blocks
    DK = E(MK, D) || E(MK, ~D), left half and right half; for SM4 (one 16-byte block, project
    convention) DK = SM4(MK, D || ~D), D and ~D the block's halves. Either way DK is 16 bytes.
    """
    if len(data) != DIVERSIFICATION_DATA_LENGTH:
        raise CryptoError(f"The diversification data must be {DIVERSIFICATION_DATA_LENGTH} bytes")
    complement = bytes(b ^ 0xFF for b in data)
    return algorithm.encrypt_block(master_key, bytes(data) + complement)


def card_key(master_key: bytes, card_identification_code: bytes, algorithm: Algorithm) -> bytes:
    """The card's own key: ``diversify(MK, diversification_data(code), algorithm)`` (docs/crypto.md)."""
    return diversify(master_key, diversification_data(card_identification_code), algorithm)


def session_key(key: bytes, challenge: bytes, terminal_data: bytes, algorithm: Algorithm) -> bytes:
    """A session key from a card key, the card's challenge and the terminal's data.

    Project convention (docs/crypto.md): SK = the last ``key_size`` (16) bytes of
    CBC-encrypt(DK, IV = 0, pad_method2(challenge || terminal_data)). Every byte of SK depends on
    every input byte; for 3DES with an 8-byte challenge and 8 bytes of terminal data this is the
    2nd and 3rd ciphertext blocks, for SM4 with a 16-byte challenge the 1st and 2nd.
    """
    if not challenge:
        raise CryptoError("The card challenge is empty")
    padded = pad_method2(bytes(challenge) + bytes(terminal_data), algorithm.block_size)
    cipher = algorithm.encrypt_cbc(key, padded, bytes(algorithm.block_size))
    if len(cipher) < algorithm.key_size:  # 3DES, one-block input: never with a non-empty challenge
        raise CryptoError("The session key input is too short")
    return cipher[-algorithm.key_size:]


# --- padding (ISO/IEC 9797-1 s6.1) --------------------------------------------------------------

def pad_method1(data: bytes, block: int) -> bytes:
    """ISO/IEC 9797-1 padding method 1: append 00 bytes up to a whole block (none if already whole;
    empty data becomes one block of zeros)."""
    _check_block(block)
    if data and len(data) % block == 0:
        return bytes(data)
    return bytes(data) + bytes(block - len(data) % block)


def pad_method2(data: bytes, block: int) -> bytes:
    """ISO/IEC 9797-1 padding method 2 (PBOC's MAC padding): append 80, then 00 bytes up to a whole
    block. Always adds at least one byte: whole-block data gets a full ``80 00 ..`` block."""
    _check_block(block)
    out = bytes(data) + b"\x80"
    return out + bytes(-len(out) % block)


def unpad_method2(data: bytes, block: int) -> bytes:
    """Remove ISO/IEC 9797-1 padding method 2. CryptoError when the padding is malformed."""
    _check_block(block)
    if not data or len(data) % block:
        raise CryptoError(f"Padded data must be a whole number of {block}-byte blocks")
    stripped = bytes(data).rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) - len(stripped) >= block:
        raise CryptoError("Malformed padding (ISO/IEC 9797-1 method 2)")
    return stripped[:-1]


def _check_block(block: int) -> None:
    if block not in (8, 16):
        raise CryptoError("The block size must be 8 or 16 bytes")


def _pad(data: bytes, block: int, method: int) -> bytes:
    if method == 1:
        return pad_method1(data, block)
    if method == 2:
        return pad_method2(data, block)
    raise CryptoError("ISO/IEC 9797-1 padding method must be 1 or 2")


# --- MACs (ISO/IEC 9797-1 s7) ------------------------------------------------------------------

def mac_3des_full(key: bytes, data: bytes, iv: bytes = bytes(8), *, padding: int = 2) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 with two-key 3DES: CBC-MAC, every block with full 3DES.

    Returns the 8-byte last CBC block. ``padding`` is the ISO/IEC 9797-1 padding method (1 or 2).
    """
    return Algorithm.TDES.encrypt_cbc(key, _pad(data, 8, padding), iv)[-8:]


def mac_retail(key: bytes, data: bytes, iv: bytes = bytes(8), *, padding: int = 2) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 ("retail MAC", ANSI X9.19), the PBOC MAC for 16-byte keys.

    Single-DES CBC with K1 (the key's left half) over every block, then output transformation 3 on
    the last: G = E(K1, D(K2, H)). Returns 8 bytes. Single DES is TripleDES(K1, K1, K1).
    """
    Algorithm.TDES.check_key(key)
    _check_iv(iv, 8)
    padded = _pad(data, 8, padding)
    k1, k2 = bytes(key[:8]), bytes(key[8:])
    enc = Cipher(_des(k1), modes.CBC(bytes(iv))).encryptor()
    h = (enc.update(padded) + enc.finalize())[-8:]
    dec = Cipher(_des(k2), modes.ECB()).decryptor()
    h = dec.update(h) + dec.finalize()
    enc = Cipher(_des(k1), modes.ECB()).encryptor()
    return enc.update(h) + enc.finalize()


def mac_sm4(key: bytes, data: bytes, iv: bytes = bytes(16), *, padding: int = 2) -> bytes:
    """ISO/IEC 9797-1 (GB/T 15852.1-2020) MAC algorithm 1 with SM4: CBC-MAC, 16-byte result."""
    return Algorithm.SM4.encrypt_cbc(key, _pad(data, 16, padding), iv)[-16:]


def pboc_mac(key: bytes, data: bytes, iv: bytes, algorithm: Algorithm) -> bytes:
    """The 4-byte MAC cards check on protected commands (PBOC 2.0 / JR/T 0025 MAC computation).

    Padding method 2; 3DES uses the retail MAC (``mac_retail``), SM4 the SM4 CBC-MAC (``mac_sm4``);
    the result is the MAC's first 4 bytes. ``iv`` is the card's challenge; a challenge shorter than
    a block (e.g. 4 or 8 bytes with SM4) is right-padded with 00 bytes to one block (project
    convention, docs/crypto.md).
    """
    if not iv or len(iv) > algorithm.block_size:
        raise CryptoError(f"The challenge used as {algorithm.value} IV must be 1 to {algorithm.block_size} bytes")
    full_iv = bytes(iv) + bytes(algorithm.block_size - len(iv))
    if algorithm is Algorithm.TDES:
        return mac_retail(key, data, full_iv)[:4]
    return mac_sm4(key, data, full_iv)[:4]


def session_mac(key: bytes, challenge: bytes, message: bytes, algorithm: Algorithm,
                terminal_data: bytes = b"") -> bytes:
    """The 4-byte MAC of a MAC-protected card command (RELOAD PIN, APPLICATION UNBLOCK).

    Project convention (docs/card-profile.md, "MAC-protected commands"), the PBOC form of
    docs/reference/commands.md, "Authentication": SK = ``session_key(DK, challenge, terminal_data)``, then
    ``pboc_mac(SK, message, iv=challenge)``. ``challenge`` is the card's last GET CHALLENGE answer,
    ``message`` the command header, Lc and data without the MAC; the commands of this project send
    no terminal data, so ``terminal_data`` is empty.
    """
    if len(challenge) > algorithm.block_size:
        raise CryptoError(f"A {algorithm.value} MAC challenge is at most {algorithm.block_size} bytes")
    sk = session_key(key, challenge, terminal_data, algorithm)
    return pboc_mac(sk, message, challenge, algorithm)


# --- hash -----------------------------------------------------------------------------------------

def sm3(data: bytes) -> bytes:
    """SM3 digest, 32 bytes (GB/T 32905-2016)."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(bytes(data))
    return digest.finalize()


# --- secrets in memory --------------------------------------------------------------------------

def wipe(buf: bytearray) -> None:
    """Overwrite a bytearray with zeros in place (PIN buffers). Python copies immutable bytes and str
    freely, so keep secrets in a bytearray and wipe it when done; this is best effort."""
    if not isinstance(buf, bytearray):
        raise CryptoError("Only a bytearray can be wiped")
    buf[:] = bytes(len(buf))
