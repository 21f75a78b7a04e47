"""The firmware's heap helpers, run in MicroPython itself (heap.py): what they promise about
where blocks lie cannot be seen from outside a board."""

import subprocess

from pocketpost_host import firmware

# A heap in fragments as a busy board's is: blocks kept among blocks given back (holes of 512
# octets, each large enough for one block of code), a free stretch above them; then 24 blocks "of code" are allocated, with or without
# heap.plug_holes first. Prints the span of their addresses and the sum of their sizes.
SCRIPT = """
import gc, sys, uctypes
sys.path.insert(0, {app!r})
from pocketpost import heap
kept = []
for i in range(60):
    kept.append(bytearray(1024))
    gone = bytearray(512)
gone = None
gc.collect()
plugs = heap.plug_holes() if {plug} else None
code = [bytearray(480) for i in range(24)]
plugs = None
gc.collect()
where = [uctypes.addressof(b) for b in code]
print(max(where) + 480 - min(where), 24 * 480)
"""


def code_span(app_dir, plug):
    script = SCRIPT.format(app=str(app_dir), plug=plug)
    result = subprocess.run([firmware.find_micropython(), "-X", "heapsize=128k", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    span, size = map(int, result.stdout.split())
    return span, size


def test_code_loaded_after_plugging_the_holes_lies_in_one_block(app_dir):
    """Loaded into a heap in fragments, a protocol's code spread over the holes among the
    sessions' blocks and left them in fragments once unloaded; with the holes plugged it lies in
    the largest free block, one piece (the blocks' own rounding aside)."""
    span, size = code_span(app_dir, plug=True)
    assert span < size * 1.2, (span, size)
    # Without the plugs the same blocks go into the holes, far apart: what the plugs prevent.
    span, size = code_span(app_dir, plug=False)
    assert span > size * 2, (span, size)
