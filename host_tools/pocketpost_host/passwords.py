"""Password hashes as the firmware stores them: PBKDF2-HMAC-SHA256, computed on the host so the
plaintext never crosses the serial line."""

import hashlib
import os
import re

SCHEME = "pbkdf2-sha256"
# The board verifies a hash at each login: ~2,000 iterations cost well under a second on an
# ESP32 (measured ~3 ms on the unix port, which is 70-115x faster) yet slow a guesser down.
DEFAULT_ITERATIONS = 2048
MIN_ITERATIONS = 1000
MAX_ITERATIONS = 1000000


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """Returns "pbkdf2-sha256$ITERATIONS$SALT_HEX$KEY_HEX" for `password`."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    return f"{SCHEME}${iterations}${salt.hex()}${key.hex()}"


def check_hash(text: str) -> str:
    """Returns `text` if the firmware takes it as a stored hash (crypto.parse_hash: the scheme,
    iterations in range, a salt of 8-64 bytes and a 32-byte key, in hex); raises ValueError."""
    parts = text.split("$") if isinstance(text, str) else []
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"a password hash reads {SCHEME}$ITERATIONS$SALT_HEX$KEY_HEX (pocketpost hash-password makes one)")
    if not re.fullmatch(r"[0-9]+", parts[1]) or not all(re.fullmatch(r"(?:[0-9a-fA-F]{2})+", p) for p in parts[2:]):
        raise ValueError("the password hash has a bad number or hex field")
    iterations = int(parts[1])
    salt = bytes.fromhex(parts[2])
    key = bytes.fromhex(parts[3])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"the password hash's iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    if not 8 <= len(salt) <= 64 or len(key) != 32:
        raise ValueError("the password hash's salt must be 8..64 bytes and its key 32 bytes")
    return text
