# The collector's schedule: a task that runs a pass over the accounts (collect.py, loaded for
# the pass and unloaded after it) when one is due, asked for (collect.now, an account added) or
# at boot. Loaded only while collector accounts are set up: a board without any keeps none of
# it; the task ends, and the module goes, when the last account is deleted.
import asyncio
import gc
import os
import sys

from . import unload
from .heap import OCCASIONAL
from .server import unload_idle


class Collector:
    def __init__(self, app):
        self.app = app
        self.task = None
        # Per account ID: [last poll (wall clock, s), its result, fetched by it, fetched since
        # boot, next poll (ticks_ms), polls since boot, deleted by it].
        self.status = {}
        self.force = None  # polls asked for now: a set of IDs, or True for all
        self.busy = False  # a pass holds the outbound connection (the relay waits for it)
        self.borrowed = 0  # client places the pass has borrowed (collect.py)

    def kick(self, force=None):
        if force is not None:
            self.force = True if force is True or self.force is True else set(force) | (self.force or set())
        if self.task is None and self.app.store is not None:
            self.task = asyncio.create_task(self._run())

    async def _run(self):
        # Each pass waits for the client sessions to end (a minute at most) and for the relay's
        # pass (one outbound connection at a time). A pass that began with no session is stopped
        # as soon as a client connects (its code, buffers and TLS session then leave the heap to
        # the client; the rest comes at the next pass); one that had to begin beside sessions
        # (after a minute of them) yields only between messages, so a busy LAN cannot starve it.
        app = self.app
        wait = 0
        try:
            while wait is not None or self.force:
                while wait and not self.force:
                    await asyncio.sleep_ms(min(wait, 1000))
                    wait -= min(wait, 1000)
                quiet = False
                for _ in range(60):
                    if not app.sessions:
                        quiet = True
                        break
                    await asyncio.sleep(1)
                for _ in range(3600):
                    if "pocketpost.relay" not in sys.modules:
                        break
                    await asyncio.sleep(1)
                # A console request (collect.now's own, say) or an AUTH exchange has its code in
                # the heap: the pass waits for it to go (5 s at most).
                for _ in range(50):
                    if not any(name in sys.modules for name in OCCASIONAL):
                        break
                    await asyncio.sleep_ms(100)
                self.busy = True
                if quiet:
                    unload_idle()  # the code of the protocols, between their clients
                try:
                    if getattr(app, "relay_context", None) is None:
                        # The TLS context first, while the heap has a block for it (~3 KB in
                        # one piece), then the collector's code.
                        from . import outbound

                        outbound.context(app)
                        outbound = None
                        unload("pocketpost.outbound")
                    from . import collect

                    task = asyncio.create_task(collect.run(app, self))
                    slots = len(app.free_slots)
                    while quiet and not task.done():
                        if app.sessions or len(app.free_slots) + self.borrowed < slots:  # a client is coming
                            task.cancel()
                            break
                        await asyncio.sleep_ms(10)
                    wait = await task
                except asyncio.CancelledError:
                    wait = 1000  # the pass stopped for a client: the rest once sessions end
                except MemoryError:
                    task = collect = None
                    unload("pocketpost.collect")
                    app.relieve_memory()
                    app.log.warn("collect", "not enough memory for a pass over the accounts now")
                    wait = 5000
                    await asyncio.sleep_ms(1000)  # (even with a poll asked for)
                except Exception as e:  # the card or the flash failed: tried again in a minute
                    app.log.exception("collect", "pass failed", e)
                    wait = 60000
                finally:
                    self.busy = False
                    task = collect = None  # (the finished task holds the module's code)
                    unload("pocketpost.collect")
                    gc.collect()
        finally:
            self.task = None
        if not _any(app.flash + "/collect"):
            app.collector = None  # no account left: this module goes too
            unload(__name__)


def _any(path):
    try:
        for _ in os.ilistdir(path):
            return True
    except OSError:
        pass
    return False
