# A fake of micropython-lib's ntptime (docs.micropython.org: ntptime): time() from the test's
# {"ntp": {"ok": true, "time": SECONDS}}, else OSError ETIMEDOUT as a request that times out;
# settime() records that the clock was set (the unix port's clock cannot be).
import time as _time

import _hardware

host = "pool.ntp.org"
timeout = 1


def time():
    ntp = _hardware.part("ntp")
    if not ntp.get("ok"):
        raise OSError(110)  # ETIMEDOUT
    return ntp.get("time", int(_time.time()))


def settime():
    t = time()
    _hardware.event("ntp settime {}".format(t))
