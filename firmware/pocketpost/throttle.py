# Login throttling per client address: every failure is answered late, and an address with
# too many recent failures is refused outright until it has been quiet for a while.
import time


class LoginThrottle:
    # Addresses remembered at once; when full the one quiet longest is forgotten.
    MAX_ADDRESSES = 32
    # The delay grows with the failures of the address, up to this many times the base delay.
    MAX_DELAY_FACTOR = 8

    def __init__(self, config):
        self.config = config
        self.failures = {}  # address -> [failures, ticks_ms of the last one]

    def _entry(self, address):
        entry = self.failures.get(address)
        if entry is not None:
            quiet = time.ticks_diff(time.ticks_ms(), entry[1])
            if quiet > self.config["auth_lockout"] * 1000:
                del self.failures[address]
                return None
        return entry

    def locked_out(self, address):
        """True when the address has failed too often recently; its attempts are refused."""
        entry = self._entry(address)
        return entry is not None and entry[0] >= self.config["auth_max_failures"]

    def failed(self, address):
        """Records a failure; returns the delay (ms) to wait before answering it."""
        entry = self._entry(address)
        if entry is None:
            if len(self.failures) >= self.MAX_ADDRESSES:
                oldest = None
                for addr, e in self.failures.items():
                    if oldest is None or time.ticks_diff(e[1], self.failures[oldest][1]) < 0:
                        oldest = addr
                del self.failures[oldest]
            entry = self.failures[address] = [0, 0]
        entry[0] += 1
        entry[1] = time.ticks_ms()
        return self.config["auth_fail_delay_ms"] * min(entry[0], self.MAX_DELAY_FACTOR)

    def succeeded(self, address):
        self.failures.pop(address, None)
