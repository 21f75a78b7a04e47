"""Password hashes as the firmware stores them: PBKDF2-HMAC-SHA256, computed on the host so the
plaintext never crosses the serial line."""

import hashlib
import os

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
