# Listening sockets and the life of a client connection, common to POP3 and SMTP: the client
# limit (RAM is shared, so one limit for both), idle time-outs, and clean-up however a session ends.
import asyncio
import gc
import sys
import time

from .netio import Closed, Connection


class Session:
    """Base of a protocol session. Subclasses implement `run`."""

    # Config key of the idle time-out in seconds.
    TIMEOUT_KEY = ""
    # Name in the log.
    NAME = ""
    # Sent to a client beyond the client limit, which is then closed.
    BUSY_REPLY = b""
    # Sent when the session cannot go on (out of memory, an internal error) before it closes.
    FAILED_REPLY = b""

    def __init__(self, app, conn, peer):
        self.app = app
        self.conn = conn
        self.peer = peer
        self.bad_commands = 0

    def timeout_ms(self):
        return self.app.config[self.TIMEOUT_KEY] * 1000

    async def timed_out(self):
        """Called when the session was idle too long, before the connection closes."""

    def finish(self):
        """Called once when the session ends, however it ends."""

    def log(self, text):
        self.app.log.info(self.NAME, "{} {}".format(self.peer, text))


class Listener:
    def __init__(self, app, session_class, port):
        self.app = app
        self.session_class = session_class
        self.port = port
        self.server = None

    async def start(self, address):
        self.server = await asyncio.start_server(self._client, address, self.port, backlog=4)

    def close(self):
        if self.server is not None:
            self.server.close()

    async def _client(self, reader, writer):
        app = self.app
        cls = self.session_class
        peer = app.board.peer_address(reader)
        if not app.free_slots or not app.accepting:
            await _refuse(cls, reader, peer, app)
            return
        slot = app.free_slots.pop()
        try:
            conn = Connection(reader, slot)
            session = cls(app, conn, peer)
        except MemoryError:
            app.free_slots.append(slot)
            gc.collect()
            await _refuse(cls, reader, peer, app)
            return
        entry = [session, asyncio.current_task(), False]  # session, task, timed out
        app.sessions.append(entry)
        try:
            await session.run()
            await conn.flush()
        except (Closed, OSError):  # the peer closed, or the connection broke (ECONNRESET, EPIPE)
            pass
        except asyncio.CancelledError:
            if entry[2]:
                session.log("idle time-out")
                try:
                    await session.timed_out()
                    await conn.flush()
                except (Closed, asyncio.CancelledError):
                    pass
        except Exception as e:
            app.log.exception(cls.NAME, "{} session failed".format(peer), e)
            sys.print_exception(e)
            try:
                conn.drop_output()  # whatever was half-written goes
                conn.put(cls.FAILED_REPLY)
                await conn.flush()
            except Exception:
                pass
        finally:
            session.finish()
            app.sessions.remove(entry)
            app.free_slots.append(slot)
            await conn.close()
            conn = session = entry = None
            gc.collect()


async def _refuse(cls, stream, peer, app):
    app.log.warn(cls.NAME, "{} refused: {} clients already".format(peer, len(app.sessions)))
    try:
        stream.write(cls.BUSY_REPLY)
        await stream.drain()
    except OSError:
        pass
    try:
        await stream.wait_closed()
    except OSError:
        pass


async def reap_idle(app):
    """Ends sessions idle longer than their time-out: one task for all, instead of a timer per
    read (each asyncio.wait_for would allocate a task)."""
    while True:
        await asyncio.sleep(1)
        now = time.ticks_ms()
        for entry in app.sessions:
            session = entry[0]
            if not entry[2] and time.ticks_diff(now, session.conn.last_active) > session.timeout_ms():
                entry[2] = True
                entry[1].cancel()
