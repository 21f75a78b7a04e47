# The fakes' view of the test's hardware: /host/hardware.json (the test writes it, and may
# change it while the firmware runs: unplug the card, switch the access point off) and
# /host/events.log (what the firmware did to the hardware, one line each). /host is the test's
# folder, mounted by esp32_boot.py next to the board's flash.
import json
import os

HOST = "/host"
_cache = [None, None]  # mtime, state


def state():
    """The hardware as the test describes it now."""
    path = HOST + "/hardware.json"
    try:
        mtime = os.stat(path)[8]
    except OSError:
        return {}
    if _cache[0] != mtime:
        with open(path) as f:
            _cache[1] = json.load(f)
        _cache[0] = mtime
    return _cache[1]


def part(name):
    return state().get(name) or {}


def event(text):
    with open(HOST + "/events.log", "a") as f:
        f.write(text + "\n")
