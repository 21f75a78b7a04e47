# The running appliance and its shutdown: wires the board to the store, the accounts, the
# servers and the console service (boot.py starts it).
import asyncio
import gc
import os
import sys

from . import heap, unload
from .console import Console
from .server import POP3, SMTP, Listener, reap_idle, unload_idle
from .store import MailStore
from .throttle import LoginThrottle
from .users import Users


class App:
    def __init__(self, board, log, config, flash, sd, slots, console_buffer, tls):
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
        self._waiting = None  # run()'s task while it waits for the board's network
        self.reboot_requested = False
        self.console_buffer = console_buffer
        self.flash = flash
        self.tls = tls  # a tls.Tls once a certificate is installed, else None
        self.relay_task = None  # _relay, while the relay queue has mail
        self.relay_now = False  # a pass through the queue is asked for
        # The test hook debug.hold (emulated board only): the heap it holds until told to let
        # go; the shortage asked for the next command of a POP3 or SMTP session or the next
        # console request, and the heap held for it, which the first relief gives back (a
        # passing shortage) or takes again (a lasting one, until the command ends).
        self.held = None
        self.hold_next = None  # (NAME, octets to leave free, lasting)
        self.held_next = None
        self.hold_leave = 0
        self.hold_lasting = False

    def hold_point(self, target):
        """Test hook, where `target`'s shortage begins (debug.hold next=target: a command of a
        POP3 or SMTP session, a console request, a TLS socket, a handshake, a queueing, an AUTH
        check): holds the heap asked for, if any, until that command ends (its caller then
        drops `held_next`) or the heap is relieved. Taken right before the step runs, after a
        collection, so the step meets the shortage whatever the timing."""
        if self.hold_next is None or self.hold_next[0] != target:
            return
        _, self.hold_leave, self.hold_lasting = self.hold_next
        self.hold_next = None
        self.held_next = heap.hold(self.hold_leave)

    def relieve_memory(self):
        """Called where a MemoryError was caught: gives back the heap that can be given back,
        the code of a protocol without sessions among it (the test hook's passing shortage
        ends here; a lasting one takes back what the relief freed, and lasts until its command
        or request ends)."""
        lasting = self.held_next is not None and self.hold_lasting
        self.held_next = None
        unload_idle()  # the code of a protocol without sessions
        heap.relieve()
        if lasting:
            self.held_next = heap.hold(self.hold_leave)

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
        if self._waiting is not None:
            self._waiting.cancel()  # an ESP32 still waiting for Wi-Fi: stop anyway

    async def run(self):
        board = self.board
        log = self.log
        if self.sd is not None:
            store = MailStore(self.sd, log)
            if board.boot_hold is not None:  # the emulated board's test hook: a short heap
                self.held = heap.hold(board.boot_hold)
            if self.check_store(store):
                self.store = store
            self.held = None
        console = Console(self, board.console_stream(), board.console_out, self.console_buffer)
        tasks = [asyncio.create_task(console.serve())]
        self._waiting = asyncio.current_task()
        try:
            self.address = await board.network_up(self.config, log)
        except asyncio.CancelledError:  # stop() before the board had a network
            await self._shutdown(tasks)
            return self.reboot_requested
        self._waiting = None
        await self._listen(POP3, "pop3_port")
        await self._listen(SMTP, "smtp_port")
        await self._listen(SMTP, "submission_port", submission=True)
        await self.start_tls_listeners()
        tasks.append(asyncio.create_task(reap_idle(self)))
        if self.store is not None and self.store.checked is not None:
            tasks.append(asyncio.create_task(self._finish_store_check()))
        self.accepting = True
        gc.collect()
        log.info("boot", "ready, {} bytes of heap free".format(gc.mem_free()))
        self.relay_kick()  # the relay queue left from before, if any
        self.collect_kick()  # the collector's accounts, if any
        await self._stop.wait()
        await self._shutdown(tasks)
        return self.reboot_requested

    def check_store(self, store):
        """Runs the boot check of the mail store (recovery.py); False when the card cannot be
        used. A heap too short to finish it is no reason not to serve: the check stops where it
        is, each mailbox it did not reach is checked when first opened, and the whole check runs
        again once the board is idle (_finish_store_check)."""
        try:
            from . import recovery

            recovery.check_store(store, self.free_slots[0].inbuf)  # no client uses it yet
            store.checked = None
        except OSError as e:
            self.log.exception("store", "the SD card cannot be used", e)
            return False
        except MemoryError:
            recovery = None
            self.held = None  # the test hook's shortage (--debug-boot-hold) ends here
            self.relieve_memory()
            try:
                self.log.warn("store", "boot check not finished (not enough memory): {} mailboxes checked, the others when first used".format(len(store.checked)))
            except MemoryError:
                pass
        finally:
            # The boot check runs once: unloading it gives its code's heap back.
            unload("pocketpost.recovery")
        return True

    async def _finish_store_check(self):
        # The boot check again, whole, when no client is connected (it empties tmp/, where a
        # delivery in progress writes), until it gets to its end.
        store = self.store
        while store.checked is not None:
            await asyncio.sleep(5)
            if not self.sessions and self.check_store(store) and store.checked is None:
                self.log.info("store", "boot check finished")

    async def _listen(self, protocol, key, implicit_tls=False, submission=False):
        # POP3 and SMTP must listen unless switched off (a taken port stops the firmware, which
        # then crashes and restarts); a TLS or submission port that cannot is logged and left out.
        name = protocol[0]  # (server.POP3 and SMTP begin with their name)
        port = self.config[key]
        if not port or port in [listener.port for listener in self.listeners]:
            return  # off, or running already
        listener = Listener(self, protocol, port, implicit_tls, submission)
        try:
            await listener.start(self.address)
        except OSError as e:
            if key in ("pop3_port", "smtp_port"):
                raise
            self.log.exception(name, "cannot listen on port {}".format(port), e)
            return
        self.listeners.append(listener)
        what = " (TLS)" if implicit_tls else (" (submission)" if submission else "")
        self.log.info(name, "listening on {}:{}{}".format(self.address, port, what))

    # ---- relaying

    def relay_kick(self):
        """Mail was queued for the smarthost, or a retry asked for: a pass starts now."""
        self.relay_now = True
        if self.relay_task is None and self.store is not None:
            self.relay_task = asyncio.create_task(self._relay())

    async def _relay(self):
        # relay.py is loaded for each pass through the queue and unloaded after it; between
        # passes only this loop waits, until the next try is due or a pass is asked for.
        wait = 0
        try:
            while wait is not None or self.relay_now:
                while wait and not self.relay_now:
                    await asyncio.sleep_ms(min(wait, 1000))
                    wait -= min(wait, 1000)
                self.relay_now = False
                # Clients first: a pass (its code, a TLS context) waits for the sessions to end,
                # a minute at most.
                for _ in range(60):
                    if not self.sessions:
                        break
                    await asyncio.sleep(1)
                for _ in range(3600):  # one outbound connection at a time: a poll ends first
                    if not getattr(self, "collector", None) or not self.collector.busy:
                        break
                    await asyncio.sleep(1)
                try:
                    if getattr(self, "relay_short", False):
                        # The last pass ran short: this one starts with the reserve given up (the
                        # idle beat has taken it back meanwhile) and the heap collected.
                        self.relay_short = False
                        self.relieve_memory()
                    unload_idle()  # the code of the protocols, between their clients
                    from . import relay

                    wait = await relay.run(self)
                except MemoryError:
                    self.relieve_memory()
                    self.relay_short = True
                    self.log.warn("relay", "not enough memory for a pass through the queue now")
                    wait = 5000
                except Exception as e:  # the card failed: tried again in a minute
                    self.log.exception("relay", "queue pass failed", e)
                    wait = 60000
                finally:
                    relay = None
                    unload("pocketpost.relay")
                    gc.collect()
                if getattr(self, "relay_bounces", False):  # set by relay.py
                    self.relay_bounces = False
                    try:
                        from . import bounce

                        await bounce.run(self)
                    except MemoryError:
                        # A shortage must not end this task (at 160k a bounce's envelope once
                        # found no 600 octets): the bounces are made again at the next pass.
                        self.relieve_memory()
                        self.relay_bounces = True
                        self.relay_short = True
                        self.log.warn("relay", "not enough memory for the bounces now")
                        wait = 5000
                    finally:
                        bounce = None
                        unload("pocketpost.bounce")
                        gc.collect()
        finally:
            self.relay_task = None

    # ---- collecting

    def collect_kick(self, force=None):
        """Starts the collector (collecting.py) when accounts are set up; `force`: the IDs of
        accounts to poll now, or True for all. (self.collector: made here, not at boot, so that a
        board without accounts has not even the attribute.)"""
        if not getattr(self, "collector", None):
            if force is None:
                try:
                    for _ in os.ilistdir(self.flash + "/collect"):
                        break
                    else:
                        return  # no account
                except OSError:
                    return  # no account was ever added
            from .collecting import Collector

            self.collector = Collector(self)
        self.collector.kick(force)

    # ---- TLS

    def load_tls(self):
        """The TLS state, made (and its module imported) on first use."""
        if self.tls is None:
            from .tls import Tls

            self.tls = Tls(self.flash, self.log)
        return self.tls

    def tls_ready(self):
        """Whether a certificate is installed and loaded."""
        return self.tls is not None and self.tls.context is not None

    def tls_usable(self):
        """Whether a session can turn to TLS at all: a certificate is loaded and the session
        cap (tls_max_sessions) is not 0."""
        return self.tls_ready() and self.config["tls_max_sessions"] > 0

    def tls_required_for_auth(self):
        setting = self.config["require_tls_for_auth"]
        return setting == "yes" or (setting == "auto" and self.tls_usable())

    async def start_tls_listeners(self):
        """POP3S and SMTPS listen once a certificate is loaded (at boot, or when installed)."""
        if self.tls_ready():
            await self._listen(POP3, "pop3s_port", implicit_tls=True)
            await self._listen(SMTP, "smtps_port", implicit_tls=True, submission=True)

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


def run_until_stopped(app):
    """Runs `app` (made by boot.start) until it stops; then reboots the board, or returns after
    Ctrl-C."""
    board = app.board
    try:
        reboot = asyncio.run(app.run())
    except KeyboardInterrupt:
        app.log.info("boot", "interrupted (Ctrl-C)")
        board.unmount()
        return
    except Exception as e:
        sys.print_exception(e)
        app.log.exception("boot", "crashed", e)
        board.unmount()
        board.reset("crash")
        return
    board.unmount()
    if reboot:
        board.reset("reboot")
