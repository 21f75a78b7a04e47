"""MicroPython's table of names (qstrs) as the firmware fills it at boot.

Every name the firmware's code uses (functions, attributes, globals, arguments, short strings)
is interned once and kept for as long as the board runs; boot.py interns the names of every
module it loads only when used, so that the table grows while the heap is still in one piece.
The table grows by pools, each twice the size of the one before, allocated in one block: the
names that fit in the last pool before the next one is needed are the firmware's headroom (on
the wheel's 64-bit MicroPython the next pool is a block of ~14 KB; ~9 KB on 32-bit)."""

import re
import subprocess

# Run in the compiled firmware's folder: the modules boot.py imports (the app and the unix
# board), then its interning of the others, then one new name at a time until the table takes
# its next pool.
_SCRIPT = """
import micropython, sys
sys.path.insert(0, ".")
import asyncio, json, os, time, binascii, hashlib, socket, select, errno
import pocketpost.app, pocketpost.board.unix
from pocketpost import boot
boot._intern_names()
micropython.qstr_info()
for i in range({most}):
    exec("spare_name_{{}} = 0".format(i))
    micropython.qstr_info()
"""
_INFO = re.compile(r"qstr pool: n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)")


def measure(app_dir, exe, most=1000):
    """Returns (names, octets, headroom, next_pool): the names interned after boot and the
    octets of heap they take (pools and text); how many more names fit before the next pool;
    the octets that pool adds (its block, with the new names' text). headroom is None when
    `most` more names still fit."""
    out = subprocess.run(
        [exe, "-X", "heapsize=4M", "-c", _SCRIPT.format(most=most)],
        cwd=app_dir, capture_output=True, text=True, timeout=120,
    )
    rows = [tuple(int(n) for n in m.groups()) for m in _INFO.finditer(out.stdout)]
    if not rows:
        raise RuntimeError("no qstr_info from {}: {}".format(exe, out.stderr.strip()[-500:]))
    pools, names, _, octets = rows[0]
    for extra, row in enumerate(rows):
        if row[0] > pools:
            return names, octets, extra - 1, row[3] - rows[extra - 1][3]
    return names, octets, None, None
