# Login throttling per client address: every failure is answered late, and an address with
# too many recent failures is refused outright until it has been quiet for a while.
#
# The table of addresses is allocated once: guessing from many addresses costs no heap (a dict
# of address strings and lists took ~150 octets an address, ~5 KB when full, on the unix port).
import time
from array import array

from micropython import const

# Times are kept modulo 2**30 ms (12 days; the ESP32's ticks_ms period), more than any lock-out.
_MASK = const(0x3FFFFFFF)


def _key(address):
    """An IPv4 address as a 32-bit number; anything else, its hash."""
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return (int(parts[0]) << 24 | int(parts[1]) << 16 | int(parts[2]) << 8 | int(parts[3])) & 0xFFFFFFFF
    return hash(address) & 0xFFFFFFFF


class LoginThrottle:
    # Addresses remembered at once; when full the one quiet longest is forgotten.
    MAX_ADDRESSES = 32
    # The delay grows with the failures of the address, up to this many times the base delay.
    MAX_DELAY_FACTOR = 8

    def __init__(self, config):
        self.config = config
        n = self.MAX_ADDRESSES
        self.keys = array("I", (0 for _ in range(n)))
        self.counts = array("H", (0 for _ in range(n)))  # failures; 0: a free place
        self.stamps = array("i", (0 for _ in range(n)))  # the last failure or refused attempt

    def _find(self, address):
        """(place of the address or -1, its key, now); forgets it once quiet long enough."""
        key = _key(address)
        now = time.ticks_ms() & _MASK
        for i in range(self.MAX_ADDRESSES):
            if self.counts[i] and self.keys[i] == key:
                if (now - self.stamps[i]) & _MASK > self.config["auth_lockout"] * 1000:
                    self.counts[i] = 0
                    return -1, key, now
                return i, key, now
        return -1, key, now

    def locked_out(self, address):
        """True when the address has failed too often recently; its attempts are refused, and
        each refused attempt restarts the quiet time it needs."""
        i, _, now = self._find(address)
        if i < 0 or self.counts[i] < self.config["auth_max_failures"]:
            return False
        self.stamps[i] = now
        return True

    def failed(self, address):
        """Records a failure; returns the delay (ms) to wait before answering it."""
        i, key, now = self._find(address)
        if i < 0:
            oldest = -1
            for j in range(self.MAX_ADDRESSES):
                age = (now - self.stamps[j]) & _MASK if self.counts[j] else _MASK + 1
                if age > oldest:
                    i, oldest = j, age
            self.keys[i] = key
            self.counts[i] = 0
        if self.counts[i] < 65535:
            self.counts[i] += 1
        self.stamps[i] = now
        return self.config["auth_fail_delay_ms"] * min(self.counts[i], self.MAX_DELAY_FACTOR)

    def succeeded(self, address):
        i, _, _ = self._find(address)
        if i >= 0:
            self.counts[i] = 0
