# A fake of the esp32 port's machine module (docs.micropython.org: machine, machine.Pin,
# machine.SDCard, machine.WDT, machine.Timer; ports/esp32/machine_sdcard.c for the card's
# behaviour): the parts the ESP32 board layer uses, with the documented signatures, constants
# and exceptions. The card is an image file; the watchdog's feeds are visible to the test, which
# plays the watchdog's hardware (it resets a board not fed in time).
import sys
import time

import _hardware

# machine.reset_cause() values of the esp32 port.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# What the test harness reads as a reset of the chip (pocketpost sim uses the same code).
_EXIT_RESET = 75


def reset_cause():
    return _hardware.state().get("reset_cause", PWRON_RESET)


def reset():
    _hardware.event("reset")
    sys.exit(_EXIT_RESET)


def freq():
    return 240000000


def unique_id():
    return b"\x24\x0a\xc4\x12\x34\x56"


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if not isinstance(id, int) or not 0 <= id <= 48:
            raise ValueError("invalid pin")
        self.id = id
        self.level = 0
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return self.level
        v = 1 if v else 0
        if v != self.level:
            _hardware.event("pin {} {}".format(self.id, v))
        self.level = v

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


# Block device ioctl operations (os.AbstractBlockDev).
_INIT = 1
_DEINIT = 2
_SYNC = 3
_BLOCK_COUNT = 4
_BLOCK_SIZE = 5
_SECTOR = 512
_EIO = -5
_hosts_in_use = set()  # SD hosts initialised and not deinit()ed (the real driver's state)


class SDCard:
    """machine.SDCard: creating one initialises the host and slot (OSError 259,
    ESP_ERR_INVALID_STATE, when that host is still in use); the card itself is initialised by
    the first block operation, and a missing card makes that fail (ioctl returns -1), which
    FatFS turns into OSError 16 (EBUSY) at mount, and makes reads and writes fail (OSError 5,
    EIO, from FatFS). The esp32 port's readblocks/writeblocks return True/False; this fake
    returns 0/-EIO, the block protocol every MicroPython version's VFS takes (the unix port
    here reads a bool as a number)."""

    def __init__(self, *, slot=1, width=1, cd=None, wp=None, miso=None, mosi=None, sck=None, cs=None, freq=20000000):
        if not 0 <= slot <= 3:
            raise ValueError("slot number must be between 0 and 3 inclusive")
        if slot < 2 and not (width in (1, 4) or (width == 8 and slot == 0)):
            raise ValueError("width must be 1 or 4 (or 8 on slot 0)")
        host = "spi{}".format(slot) if slot >= 2 else "sdmmc"
        if host in _hosts_in_use:
            raise OSError(259)
        _hosts_in_use.add(host)
        self.host = host
        self.file = None
        _hardware.event("SDCard slot={} width={} sck={} mosi={} miso={} cs={} freq={}".format(slot, width, sck, mosi, miso, cs, freq))

    def _card(self):
        """The card's image file while a card is in the slot, else None."""
        card = _hardware.part("sd")
        if not card.get("present", True) or "image" not in card:
            if self.file is not None:
                self.file.close()
                self.file = None
            return None
        if self.file is None:
            self.file = open(_hardware.HOST + "/" + card["image"], "r+b")
        return self.file

    def readblocks(self, block, buf):
        f = self._card()
        if f is None or _hardware.part("sd").get("read_errors"):
            return _EIO
        f.seek(block * _SECTOR)
        f.readinto(buf)
        return 0

    def writeblocks(self, block, buf):
        f = self._card()
        if f is None:
            return _EIO
        f.seek(block * _SECTOR)
        f.write(buf)
        return 0

    def ioctl(self, op, arg):
        f = self._card()
        if op == _DEINIT:
            return 0
        if f is None:
            return -1
        if op == _INIT:
            return 0
        if op == _SYNC:
            f.flush()
            return 0
        if op == _BLOCK_COUNT:
            f.seek(0, 2)
            return f.tell() // _SECTOR
        if op == _BLOCK_SIZE:
            return _SECTOR
        return -1

    def info(self):
        f = self._card()
        if f is None:
            raise OSError(116)  # MP_ETIMEDOUT on the esp32 port
        f.seek(0, 2)
        return (f.tell(), _SECTOR)

    def deinit(self):
        if self.host in _hosts_in_use:
            _hosts_in_use.remove(self.host)
            _hardware.event("SDCard deinit")
        if self.file is not None:
            self.file.close()
            self.file = None


class WDT:
    """machine.WDT: once started it cannot be stopped; the test resets a board whose watchdog is
    not fed for `timeout` ms (it reads the time of the last feed in /host/wdt)."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self.timeout = timeout
        _hardware.event("WDT timeout={}".format(timeout))
        self.feed()

    def feed(self):
        with open(_hardware.HOST + "/wdt", "w") as f:
            f.write(str(self.timeout))


class Timer:
    """machine.Timer: the fake records it; callbacks do not run (the unix port cannot interrupt
    a blocked REPL), which the tests that use it do not need."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, *, mode=PERIODIC, period=-1, callback=None):
        self.callback = callback
        _hardware.event("Timer {} mode={} period={}".format(id, mode, period))

    def deinit(self):
        _hardware.event("Timer deinit")


class RTC:
    def datetime(self, value=None):
        if value is None:
            return time.localtime()
        _hardware.event("RTC {}".format(value))
