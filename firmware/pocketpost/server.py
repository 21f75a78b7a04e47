# Listening sockets and the life of a client connection, common to POP3 and SMTP: the client
# limit (RAM is shared, so one limit for both), idle time-outs, clean-up however a session ends,
# and each protocol's code loaded while it has clients (session_begins).
import asyncio
import gc
import socket
import sys
import time
from asyncio.core import _io_queue

from micropython import const

from . import unload
from .heap import PATIENT, with_relief
from .heap import restore as restore_reserve
from .netio import Closed, Connection

# Connections the kernel (or lwIP) keeps waiting to be accepted.
_BACKLOG = const(4)
# How long a client of an implicit-TLS port waits for a TLS place: 20 x 100 ms.
_TLS_PLACE_WAITS = const(20)
_TLS_PLACE_WAIT_MS = const(100)
# How long the sessions' code stays loaded after the last session (session_begins).
_IDLE_MS = const(3000)


# The protocols, as their listeners know them before their code is loaded (session_begins): the
# name in the log, the class of their sessions, its module and those only they use, the replies
# to a client refused (too many clients; no memory for its session); then the sessions open (or
# being opened), and, while the code stays loaded with none open, the ticks_ms since when.
POP3 = ["pop3", "Pop3Session", ("pocketpost.pop3", "pocketpost.maildrop"), b"-ERR [SYS/TEMP] Too many clients, try again later.\r\n", b"-ERR [SYS/TEMP] Not enough memory, try again later.\r\n", 0, None]
SMTP = ["smtp", "SmtpSession", ("pocketpost.smtp",), b"421 4.3.2 Too many connections, try again later\r\n", b"421 4.3.0 Not enough memory, try again later\r\n", 0, None]
_NAME = const(0)
_CLASS = const(1)
_MODULES = const(2)
_BUSY_REPLY = const(3)
_NOMEM_REPLY = const(4)
_SESSIONS = const(5)
_IDLE_SINCE = const(6)
# The modules the sessions of both protocols use: they go with the last protocol's code.
_SHARED = ("pocketpost.session", "pocketpost.transparency")
# Both protocols, for loops that must allocate nothing (a tuple written in place is made anew).
_PROTOCOLS = (POP3, SMTP)
# Every module of the sessions' code (boot.py interns their names).
SESSION_MODULES = POP3[_MODULES] + SMTP[_MODULES] + _SHARED

# A protocol's code (pop3.py with maildrop.py: ~12 KB of a 64-bit port's heap; smtp.py: ~15 KB;
# and transparency.py, ~3 KB, which both use) is loaded when a client connects and none of its
# sessions has it, and unloaded once the protocol has had no session for _IDLE_MS, or at once
# where the heap runs short, for the relay and the collector, and as a session of the other
# protocol begins TLS (unload_idle; Session.begin_tls): between clients that heap is theirs
# and the console's. (Unloaded as soon as the last session ended, it was
# loaded again for nearly every client of a busy board, into a heap in fragments: at 160k, four
# clients at once had dozens refused.)


async def session_begins(app, protocol):
    """A session of `protocol` begins: returns its class, its code loaded (when short, again
    after a pause and the heap's relief, heap.with_relief: the code needs blocks as large as
    its largest function, and the other protocol's code can be unloaded only once its last
    session has ended, which a client that sent QUIT and at once connected to the other port
    may not have seen yet). MemoryError when there is no room for it even then; the session is
    then not counted."""
    if not protocol[_SESSIONS] and protocol[_IDLE_SINCE] is None:
        await with_relief(app.relieve_memory, _load, protocol, again=PATIENT)
    protocol[_SESSIONS] += 1
    protocol[_IDLE_SINCE] = None
    return getattr(sys.modules[protocol[_MODULES][0]], protocol[_CLASS])


def _load(protocol):
    try:
        __import__(protocol[_MODULES][0])
    except MemoryError:
        if not protocol[_SESSIONS]:  # (a session that began meanwhile has it whole)
            _unload(protocol)  # a module cut short is not kept
        raise


def session_ended(protocol):
    protocol[_SESSIONS] -= 1
    if not protocol[_SESSIONS]:
        protocol[_IDLE_SINCE] = time.ticks_ms()  # the code stays for the next client


def unload_idle(now=None):
    """Unloads the code of each protocol that has no session open: at once (`now` None: the
    heap ran short, or the relay or the collector is to run), or once it has had none for
    _IDLE_MS. (A session keeps its code: unloaded, it would be loaded a second time beside it.)"""
    for protocol in _PROTOCOLS:  # (the heap may be short: this runs in a relief)
        since = protocol[_IDLE_SINCE]
        if since is not None and not protocol[_SESSIONS] and (now is None or time.ticks_diff(now, since) >= _IDLE_MS):
            _unload(protocol)


def _unload(protocol):
    protocol[_IDLE_SINCE] = None
    for name in protocol[_MODULES]:
        unload(name)
    if POP3[_IDLE_SINCE] is None and not POP3[_SESSIONS] and SMTP[_IDLE_SINCE] is None and not SMTP[_SESSIONS]:
        for name in _SHARED:
            unload(name)


class Listener:
    def __init__(self, app, protocol, port, implicit_tls=False, submission=False):
        self.app = app
        self.protocol = protocol
        self.port = port
        self.implicit_tls = implicit_tls  # POP3S and SMTPS: TLS from the first byte (RFC 8314)
        self.submission = submission
        self.task = None  # the accepting task

    async def start(self, address):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(socket.getaddrinfo(address, self.port)[0][-1])
        s.listen(_BACKLOG)
        s.setblocking(False)
        self.task = asyncio.create_task(self._accept(s))

    def close(self):
        if self.task is not None:
            self.task.cancel()

    async def _accept(self, s):
        # asyncio.start_server's loop (its own I/O queue, as asyncio.stream does), but a
        # shortage of memory while a connection is taken costs that connection only: in
        # asyncio's loop it ends the loop, and every later client would find the port dead.
        try:
            while True:
                yield _io_queue.queue_read(s)
                app = self.app
                try:
                    client, address = s.accept()
                except OSError:
                    continue  # the client left before it was taken
                except MemoryError:
                    app.relieve_memory()
                    continue  # (no socket object for it: it is not served)
                app.hold_point("accept")  # the emulated board's test hook: a shortage here
                try:
                    self._start(client, address)
                except MemoryError:
                    self._start_again(client, address)
        finally:
            s.close()

    def _start_again(self, client, address):
        # A shortage as a client was taken, before anything was done for it: tried once more
        # with the heap relieved (at 160k, four clients at once failing their logins met it),
        # else refused with the temporary error. (Its log line may run short as well: nothing
        # here may end the accepting loop.)
        app = self.app
        app.relieve_memory()
        try:
            self._start(client, address)
            note = "a client taken again after a shortage"
        except MemoryError:
            try:
                client.send(self.protocol[_NOMEM_REPLY])
            except OSError:
                pass
            client.close()
            note = "a client refused: not enough memory"
        app.held_next = None  # the test hook's shortage for this client, if any (dropped here
        # only: one asked for another step may be held while a client connects)
        try:
            app.log.warn(self.protocol[_NAME], note)
        except MemoryError:
            pass

    def _start(self, client, address):
        # Out of _accept's frame, which lives as long as the firmware (see _time_out_idle): the
        # client's coroutine must not stay in a slot of it after its session ended.
        client.setblocking(False)
        stream = asyncio.StreamReader(client, {"peername": address})
        asyncio.create_task(self._client(stream, stream))

    async def _enter_tls(self, session):
        """Starts TLS on an implicit-TLS port; False when no TLS place frees in time or the
        heap has no room for the TLS socket."""
        app = self.app
        if not await _tls_place(session):
            app.log.warn(session.NAME, "{} refused: {} TLS sessions already".format(session.peer, app.tls.sessions))
            return False
        app.hold_point("tls")  # the emulated board's test hook: a shortage for the TLS socket
        try:
            session.begin_tls()
        except MemoryError:
            app.relieve_memory()
            app.log.warn(session.NAME, "{} refused: no memory for TLS".format(session.peer))
            return False
        app.hold_point("handshake")  # the test hook: a shortage in the handshake and the greeting
        return True

    async def _client(self, reader, writer):
        app = self.app
        protocol = self.protocol
        peer = app.board.peer_address(reader)
        if not app.free_slots or not app.accepting:
            app.log.warn(protocol[_NAME], "{} refused: {} clients already".format(peer, len(app.sessions)))
            await _refuse(protocol[_BUSY_REPLY], reader)
            return
        slot = app.free_slots.pop()
        session = None
        try:
            cls = await session_begins(app, protocol)
            try:
                conn = Connection(reader, slot)
                session = cls(app, conn, peer, self.submission)
            except MemoryError:
                cls = None
                session_ended(protocol)
        except MemoryError:
            pass
        if session is None:
            cls = None
            app.free_slots.append(slot)
            app.relieve_memory()
            try:
                app.log.warn(protocol[_NAME], "{} refused: not enough memory".format(peer))
            except MemoryError:
                pass  # the refusal matters more than the log line
            await _refuse(protocol[_NOMEM_REPLY], reader)
            return
        if self.implicit_tls and not await self._enter_tls(session):
            # Nothing can be said before the handshake, so the client is just closed.
            app.held_next = None  # the test hook's shortage for this handshake, if any
            session.release()
            app.free_slots.append(slot)
            await conn.close()
            session = cls = None
            session_ended(protocol)
            return
        entry = None
        try:
            # (In the try: the heap may be short here too, after a handshake most of all.)
            entry = [session, asyncio.current_task(), False]  # session, task, timed out
            app.sessions.append(entry)
            await session.run()
            await conn.flush()
        # (One class a clause: a tuple of them is made as the clause is tried, and where the
        # heap is short, that MemoryError would replace the one being caught and end the task.)
        except Closed:  # the peer closed
            pass
        except OSError:  # the connection broke (ECONNRESET, EPIPE)
            pass
        except MemoryError:
            # Short of memory outside a command (reading a line, or while answering one).
            app.relieve_memory()
            _last_word(conn, cls.NOMEM_CLOSING or cls.NOMEM_REPLY)
            try:
                app.log.warn(cls.NAME, "{} session closed: not enough memory".format(peer))
            except MemoryError:
                pass
        except asyncio.CancelledError:
            if entry is not None and entry[2]:
                session.log("idle time-out")
                _last_word(conn, session.timeout_reply())
        except Exception as e:
            app.log.exception(cls.NAME, "{} session failed".format(peer), e)
            sys.print_exception(e)
            _last_word(conn, cls.FAILED_REPLY)
        finally:
            app.held_next = None  # the test hook's shortage for its handshake, if any
            session.finish()
            session.release()
            if entry is not None and entry in app.sessions:
                app.sessions.remove(entry)
            app.free_slots.append(slot)
            try:
                await conn.close()
            except MemoryError:  # no room for the coroutine: closed all the same
                conn.close_now()
            conn = session = entry = cls = None
            session_ended(protocol)
            gc.collect()
            if not app.sessions:
                restore_reserve()  # taken again when no session needs the heap


def _last_word(conn, reply):
    # A closing reply, sent only if the socket takes it now: the peer may be the reason the
    # session ends (it reads nothing, or never finished a TLS handshake), so no waiting for it.
    try:
        conn.drop_output()  # whatever was half-written goes
        conn.put(reply)
        conn.push()
    except Exception:
        pass


async def _tls_place(session):
    # Clients often open the next connection just before the last one has ended: a place
    # that frees within a moment is waited for.
    for _ in range(_TLS_PLACE_WAITS):
        if session.reserve_tls():
            return True
        await asyncio.sleep_ms(_TLS_PLACE_WAIT_MS)
    return False


async def _refuse(reply, stream):
    # (A shortage here costs this client only: its reply is not sent.)
    try:
        stream.write(reply)
        await stream.drain()
    except Exception:
        pass
    try:
        await stream.wait_closed()
    except Exception:
        pass


async def reap_idle(app):
    """Ends sessions idle longer than their time-out: one task for all, instead of a timer per
    read (each asyncio.wait_for would allocate a task). Its once-a-second pass is also the
    board's beat (the emulated board's watchdog feed)."""
    beat = app.board.beat  # the emulated board's watchdog is fed here
    while True:
        await asyncio.sleep(1)
        beat()
        try:
            now = time.ticks_ms()
            unload_idle(now)
            if not app.sessions:
                restore_reserve()  # given up where a shortage was met: taken again when idle
            _time_out_idle(app, now)
        except MemoryError:  # tried again in a second: a shortage never ends this task
            gc.collect()


def _time_out_idle(app, now):
    # A function of its own, not in reap_idle's loop: that coroutine's frame lives as long as
    # the firmware, on the heap, and the garbage collector reads every slot of it, the stale
    # ones of its value stack too. A session once handled there (a bound method of it left in
    # a slot) stayed reachable after it ended, and with it its class and the whole module of
    # its code, unloaded or not: under CPU load at 160k, 17-24 KB stayed after four clients
    # had gone. A function's frame is not kept once it returns.
    for entry in app.sessions:
        session = entry[0]
        if not entry[2] and time.ticks_diff(now, session.conn.last_active) > session.timeout_ms():
            entry[2] = True
            entry[1].cancel()
