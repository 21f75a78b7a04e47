# The emulated board's test hook (the console's debug.hold, --debug-boot-hold): a shortage of
# heap made on purpose, so that a test meets it at a chosen point. A module of its own, loaded
# only where a hold is asked for: a board in service never has it in its heap.
import gc

from . import heap


def hold(leave, exact=False):
    """Takes heap until only `leave` octets are free, in blocks of 1,000 octets down to 12 (as
    fragments of a long-running heap would be), and returns what holds them; dropping it gives
    them back. `exact`: the holes that leaves are taken too (a step that allocates a few small
    objects fits in them)."""
    heap._reserve = None  # (heap.py's reserve) a shortage it is: the reserve goes first
    gc.collect()
    held = None  # a chain of (previous, block): no list that must grow in one piece
    for size in (1000, 250, 60, 12):
        try:
            while gc.mem_free() > leave + size:
                held = (held, bytearray(size))
        except MemoryError:
            pass  # no block of that size is left: smaller ones
    if exact:
        gc.collect()  # (the MemoryErrors met above are garbage: their blocks are holes too)
        try:
            while gc.mem_free() > leave:
                held = (held, None)  # one allocation each: a failure leaves no garbage
        except MemoryError:
            pass
    return held
