# The heap: how much of it is left in one piece, and what the firmware gives back when it runs
# short (a MemoryError caught at a session's command or a console request).
import asyncio
import gc
import sys

from micropython import const

# Modules loaded for one job and unloaded after it (console requests, AUTH, the boot check,
# validation of settings, the certificate parser, a collector's pass): boot.py interns their
# names, relieve() unloads any still loaded when the heap runs short. (Interned at boot, the
# collector's ~250 names cost 512 octets there instead of fragments left by its first pass, after
# which a pass of an account with 3,000 messages ran short at 176k.)
OCCASIONAL = (
    "pocketpost.requests.board",
    "pocketpost.requests.users",
    "pocketpost.requests.config",
    "pocketpost.requests.mailbox",
    "pocketpost.requests.tls",
    "pocketpost.requests.tls_install",
    "pocketpost.requests.queue",
    "pocketpost.requests.relay",
    "pocketpost.enqueue",
    "pocketpost.kept_uidls",
    "pocketpost.auth",
    "pocketpost.sasl",
    "pocketpost.config_schema",
    "pocketpost.recovery",
    "pocketpost.x509",
    "pocketpost.requests.collect",
    "pocketpost.outbound",
    "pocketpost.collect",
)


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


# A block held while memory is plentiful and given up where a MemoryError is caught: the command
# that ran short can then be answered, or redone where that is safe, from a block of this size
# in one piece, however fragmented the rest of the heap is. Taken again when no client session is
# open (restore): under load it is left to the sessions.
RESERVE = const(2048)
_reserve = None

# Pauses (ms) before each new try of a step that ran short of memory (with_relief): beside
# other sessions a try right after the relief meets the same shortage, as they are still
# allocating; a moment later most have finished and given their heap back. About a second in all
# (QUICK), or 7.6 s (PATIENT) for a step whose failure costs the client more than the wait: the
# end of a message received whole (sent again), a QUIT's deletions (which three files open at
# once, each with its 512-octet sector buffer, need). Under stress-ng at 160k, beside two clients
# delivering 400 KB messages while another board ran the hostile loads, a second was not always
# enough, nor were 3.8 s: the other clients hold their heap for as long as their transfers last.
_RETRY_PAUSES_MS = (60, 120, 240, 480, 960, 1920, 3840)
QUICK = const(4)
PATIENT = const(7)


def _generator():
    yield


# What a coroutine is to MicroPython: a generator.
_COROUTINE = type(_generator())


async def with_relief(relieve, step, *args, again=QUICK, possible=None, note=None):
    """Returns `step(*args)` (awaited when it is a coroutine). Where it runs short of memory and
    can be tried again (it changed nothing, or goes on where it stopped), it is, up to `again`
    times: each time after `relieve()`, a pause and `relieve()` again, while `possible()`, when
    given, says a try can still be made; `note()`, when given, is called once before the first
    of them (a log line). The last MemoryError is the caller's.

    Everything the tries need (this coroutine, the bound methods passed in) is made before the
    first try, while the heap has room: after a shortage nothing is allocated but the note."""
    i = 0
    while True:
        try:
            result = step(*args)
            if type(result) is _COROUTINE:
                result = await result
            return result
        except MemoryError:
            if i == again or (possible is not None and not possible()):
                raise
        relieve()
        if note is not None and not i:
            try:
                note()
            except MemoryError:
                pass  # the try matters more than the log line
        await asyncio.sleep_ms(_RETRY_PAUSES_MS[i])
        # Relieved again right before the try: what the other tasks dropped during the pause
        # is collected for it too (the relief before the pause lets them finish with it).
        relieve()
        i += 1


def restore():
    """Takes the reserve again if it was given up and the heap has a block for it."""
    global _reserve
    if _reserve is None:
        try:
            _reserve = bytearray(RESERVE)
        except MemoryError:
            pass


def reserved():
    """Octets held in reserve now (0 while it is given up)."""
    return 0 if _reserve is None else RESERVE


def relieve():
    """Gives back what can be given without harm: the reserve, modules loaded for one job, then
    garbage."""
    global _reserve
    from . import unload

    _reserve = None
    for name in OCCASIONAL:
        if name in sys.modules:
            unload(name)
    gc.collect()


def hold(leave):
    """Test hook (the console's debug.hold, emulated board only): takes heap until only `leave`
    octets are free, in blocks of 1,000 octets down to 12 (as fragments of a long-running heap
    would be), and returns what holds them; dropping it gives them back."""
    global _reserve
    _reserve = None  # a shortage it is: the reserve goes first
    gc.collect()
    held = None  # a chain of (previous, block): no list that must grow in one piece
    for size in (1000, 250, 60, 12):
        try:
            while gc.mem_free() > leave + size:
                held = (held, bytearray(size))
        except MemoryError:
            pass  # no block of that size is left: smaller ones
    return held
