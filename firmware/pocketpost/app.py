# The running appliance and its shutdown: wires the board to the store, the accounts, the
# servers and the console service (boot.py starts it).
import asyncio
import gc
import sys

from .console import Console
from .pop3 import Pop3Session
from .server import Listener, reap_idle
from .smtp import SmtpSession
from .store import MailStore
from .throttle import LoginThrottle
from .users import Users


class App:
    def __init__(self, board, log, config, flash, sd, slots, console_buffer):
        self.board = board
        self.log = log
        self.config = config
        self.sd = sd
        self.users = Users(flash)
        self.throttle = LoginThrottle(config)
        self.free_slots = slots  # buffers for client connections not in use
        self.sessions = []  # [session, task, timed out] of every open client connection
        self.accepting = False
        self.address = None
        self.store = None
        self.listeners = []
        self._stop = asyncio.Event()
        self.reboot_requested = False
        self.console_buffer = console_buffer

    def storage_ready(self):
        return self.store is not None

    def storage_info(self):
        if self.store is None:
            return {"state": self.board.storage_state}
        try:
            total, free = self.store.space()
        except OSError as e:
            return {"state": "error {}".format(e)}
        return {"state": "ok", "total": total, "free": free}

    def stop(self, reboot=False):
        """Asks the appliance to shut down cleanly (and to start again when `reboot`)."""
        self.reboot_requested = reboot
        self._stop.set()

    async def run(self):
        board = self.board
        log = self.log
        if self.sd is not None:
            store = MailStore(self.sd, log)
            from . import recovery

            try:
                recovery.check_store(store, self.free_slots[0].inbuf)  # no client yet
                self.store = store
            except OSError as e:
                log.exception("store", "the SD card cannot be used", e)
            # The boot check runs once: unloading it gives its code's heap back.
            del sys.modules[recovery.__name__]
            del recovery
        console = Console(self, board.console_stream(), board.console_out, self.console_buffer)
        tasks = [asyncio.create_task(console.serve())]
        self.address = await board.network_up(self.config, log)
        for cls, key in ((Pop3Session, "pop3_port"), (SmtpSession, "smtp_port")):
            listener = Listener(self, cls, self.config[key])
            await listener.start(self.address)
            self.listeners.append(listener)
            log.info(cls.NAME, "listening on {}:{}".format(self.address, listener.port))
        tasks.append(asyncio.create_task(reap_idle(self)))
        self.accepting = True
        gc.collect()
        log.info("boot", "ready, {} bytes of heap free".format(gc.mem_free()))
        await self._stop.wait()
        await self._shutdown(tasks)
        return self.reboot_requested

    async def _shutdown(self, tasks):
        self.accepting = False
        for listener in self.listeners:
            listener.close()
        for entry in self.sessions:
            entry[1].cancel()  # a session ended this way deletes nothing
        for task in tasks:
            task.cancel()
        for _ in range(20):
            if not self.sessions:
                break
            await asyncio.sleep_ms(50)
        self.log.info("boot", "stopped")
