# Password hashes: PBKDF2-HMAC-SHA256 built on hashlib.sha256 (MicroPython has no hmac module),
# and comparisons of secrets in constant time.
#
# A stored hash reads "pbkdf2-sha256$<iterations>$<salt hex>$<key hex>"; the host tools make it
# (hashlib.pbkdf2_hmac on CPython), so the board never sees the plaintext password.
import asyncio
import binascii
import hashlib

from micropython import const

_BLOCK = const(64)  # SHA-256 block size, the HMAC key length
# Iterations between yields to the event loop: on the ESP32 a login hash takes long enough
# (~0.1 ms per iteration) that other clients would stall if it ran in one piece.
_YIELD_EVERY = const(256)

SCHEME = "pbkdf2-sha256"
MIN_ITERATIONS = const(1000)
MAX_ITERATIONS = const(1000000)


def _pads(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _hmac(ipad, opad, msg):
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


async def pbkdf2_sha256(password, salt, iterations):
    """The first 32-byte block of PBKDF2-HMAC-SHA256 (RFC 8018), yielding now and then."""
    ipad, opad = _pads(password)
    u = _hmac(ipad, opad, salt + b"\x00\x00\x00\x01")
    # XOR of all the U_i, kept as one integer: one operation per iteration instead of 32.
    acc = int.from_bytes(u, "big")
    for i in range(1, iterations):
        u = _hmac(ipad, opad, u)
        acc ^= int.from_bytes(u, "big")
        if i % _YIELD_EVERY == 0:
            await asyncio.sleep_ms(0)
    return acc.to_bytes(32, "big")


def equal(a, b):
    """Compares two byte strings in time that depends only on their lengths."""
    diff = len(a) ^ len(b)
    for i in range(min(len(a), len(b))):
        diff |= a[i] ^ b[i]
    return diff == 0


def parse_hash(text):
    """Splits a stored hash into (iterations, salt, key); raises ValueError when malformed."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError("hash must be pbkdf2-sha256$ITERATIONS$SALT_HEX$KEY_HEX")
    try:
        iterations = int(parts[1])
        salt = binascii.unhexlify(parts[2])
        key = binascii.unhexlify(parts[3])
    except ValueError:
        raise ValueError("hash has a bad number or hex field")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError("iterations must be {}..{}".format(MIN_ITERATIONS, MAX_ITERATIONS))
    if not 8 <= len(salt) <= 64 or len(key) != 32:
        raise ValueError("salt must be 8..64 bytes and the key 32 bytes")
    return iterations, salt, key


async def verify(password, stored):
    """True when `password` (bytes) matches the stored hash text."""
    iterations, salt, key = parse_hash(stored)
    return equal(await pbkdf2_sha256(password, salt, iterations), key)


def md5_hex(data):
    return binascii.hexlify(hashlib.md5(data).digest()).decode()
