# The heap: how much of it is left in one piece, and what the firmware gives back when it runs
# short (a MemoryError caught at a session's command or a console request).
import gc
import sys

# Modules loaded for one job that may still be in memory when the heap runs short.
_OCCASIONAL = ("pocketpost.x509", "pocketpost.recovery")


def largest_block():
    """Octets of the largest block the heap can give now (micropython.mem_info's "max free
    sz", which the port prints but does not return): found by trying, halving the step."""
    gc.collect()
    size = 0
    step = 1 << 16
    while step >= 16:
        try:
            block = bytearray(size + step)
            size += step
            block = None
        except MemoryError:
            step >>= 1
    gc.collect()
    return size


def relieve():
    """Gives back what can be given without harm: modules loaded for one job, then garbage."""
    from . import unload

    for name in _OCCASIONAL:
        if name in sys.modules:
            unload(name)
    gc.collect()


def hold(leave):
    """Test hook (the console's debug.hold, emulated board only): takes heap until only `leave`
    octets are free, in blocks of 1,000 octets down to 12 (as fragments of a long-running heap
    would be), and returns what holds them; dropping it gives them back."""
    gc.collect()
    held = None  # a chain of (previous, block): no list that must grow in one piece
    for size in (1000, 250, 60, 12):
        try:
            while gc.mem_free() > leave + size:
                held = (held, bytearray(size))
        except MemoryError:
            pass  # no block of that size is left: smaller ones
    return held
