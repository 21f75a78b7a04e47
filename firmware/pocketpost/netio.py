# A client connection: a bounded line reader and a coalescing writer over one socket.
#
# Every byte a client sends lands in one buffer allocated at boot (a Slot); lines are found with
# bytearray.find (one read() per chunk, not one per byte as Stream.readline does) and a line
# longer than the caller's limit is thrown away as it arrives, never accumulated. Replies are
# copied into one output buffer and sent when the session next waits for input, so a multi-line
# reply or a batch of pipelined replies leaves in one write (Nagle + delayed ACK cost ~40 ms per
# extra write on loopback, and lwIP on the ESP32 has Nagle on too).
#
# The socket itself (the asyncio stream's, which is non-blocking) is read and written directly
# when it has data or room: MicroPython's readinto(buf) and write(buf, off, n) allocate nothing,
# while each asyncio wait allocates a coroutine and an I/O-queue entry. So moving a message
# allocates next to nothing while the peer keeps up, and the garbage collector stays idle
# (on a board each collection of a ~100 KB heap pauses every client). The stream's own waits are
# used only when the socket has nothing to read.
#
# MicroPython puts a function's frame on the heap when its locals, stack and exception handlers
# exceed 11 words (VM_MAX_STATE_ON_STACK), so the per-chunk functions here have no try block:
# a broken connection surfaces as OSError and ends the session in server.py.
import asyncio
import time

from micropython import const

_LF = const(10)
_CR = const(13)
# socket.IPPROTO_TCP / TCP_NODELAY are missing from some ports' socket module; the values are
# the same on Linux and lwIP.
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)
# Longest pause (ms) between attempts to write to a socket whose buffer is full. Waiting by
# sleeping allocates nothing; the pause grows while the client reads nothing.
_MAX_SEND_PAUSE_MS = const(50)


class Closed(Exception):
    """The peer closed the connection (or reset it)."""


class Slot:
    """The buffers of one client connection, allocated once at boot so a connection never needs
    a large block from a fragmented heap."""

    # Octets of client input held at once: the longest command line and the chunk in which
    # DATA is read.
    IN_SIZE = 768
    # Octets of replies coalesced before a write; RETR reads the message into it, half of it
    # at a time.
    OUT_SIZE = 1024

    def __init__(self):
        self.inbuf = bytearray(self.IN_SIZE)
        self.outbuf = bytearray(self.OUT_SIZE)
        self.inmv = memoryview(self.inbuf)


class Connection:
    def __init__(self, stream, slot):
        self.stream = stream
        self.sock = stream.s  # asyncio streams expose no socket API: see the module comment
        try:
            self.sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - a port without the option
            pass
        self.slot = slot
        self.inbuf = slot.inbuf
        self.inmv = slot.inmv
        # The unread input is inbuf[head:tail].
        self.head = 0
        self.tail = 0
        self.outbuf = slot.outbuf
        self.outlen = 0  # octets queued in outbuf
        self.sent = 0  # of those, octets already written
        self.overflow = b""  # what did not fit in outbuf, sent after it
        self.pushed = 0  # writes made so far (tells whether a reply has begun to leave)
        # ticks_ms of the last progress in either direction; the server's reaper reads it.
        self.last_active = time.ticks_ms()
        self.handshaking = False  # a TLS handshake started and no data has come through yet

    # ---- input

    def buffered(self):
        """Number of received bytes not consumed yet."""
        return self.tail - self.head

    def _room(self):
        # Where the next read goes: after the unread bytes, moved to the front when needed.
        if self.head == self.tail:
            self.head = self.tail = 0
        elif self.tail == len(self.inbuf):
            self.compact()
        return self.inbuf if self.tail == 0 else self.inmv[self.tail :]

    def _got(self, n):
        if n == 0:
            raise Closed()
        self.tail += n
        self.last_active = time.ticks_ms()
        self.handshaking = False
        return n

    def take(self):
        """Reads what the socket holds now, without waiting; returns how many bytes (0 when
        nothing has arrived). Raises Closed at end of stream, OSError when the connection
        broke. The caller leaves room."""
        n = self.sock.readinto(self._room())
        return 0 if n is None else self._got(n)

    async def fill(self):
        """Reads at least one more byte after the unread ones, waiting for it; returns how many.

        Pending output is sent first: a client that pipelines waits for those replies."""
        if self.outlen and not self.push():
            await self.flush()
        n = self.take()
        while not n:
            n = await self.stream.readinto(self._room())
            # None is EAGAIN after a spurious wake-up; only 0 is the end of the stream.
            n = 0 if n is None else self._got(n)
        return n

    def start_tls(self, tls):
        """Continues the connection inside TLS (the handshake runs as data moves). What the
        client sent before the handshake is dropped: with STARTTLS/STLS, plaintext pipelined
        after the command must never count as protected (CVE-2011-0411). Queued output must
        have been sent."""
        self.head = self.tail = 0
        self.sock = tls.wrap(self.sock)
        self.stream.s = self.sock  # the stream's waits watch the TLS socket from now on
        self.handshaking = True

    def compact(self):
        """Moves the unread bytes to the start of the buffer."""
        if self.head:
            n = self.tail - self.head
            self.inmv[0:n] = self.inmv[self.head : self.tail]
            self.head = 0
            self.tail = n

    async def readline(self, limit):
        """Returns the next line without its CRLF (or bare LF) as a memoryview into the input
        buffer, valid until the next read. A line of more than `limit` octets including its line
        end is discarded up to its end and None is returned instead."""
        inbuf = self.inbuf
        scanned = 0  # bytes after head already searched for LF
        while True:
            lf = inbuf.find(b"\n", self.head + scanned, self.tail)
            if lf >= 0:
                start = self.head
                self.head = lf + 1
                if lf + 1 - start > limit:
                    return None
                if lf > start and inbuf[lf - 1] == _CR:
                    lf -= 1
                return self.inmv[start:lf]
            scanned = self.tail - self.head
            if scanned >= limit:
                await self._discard_line()
                return None
            await self.fill()

    async def _discard_line(self):
        # Drops input up to and including the next LF, keeping nothing of the overlong line.
        while True:
            lf = self.inbuf.find(b"\n", self.head, self.tail)
            if lf >= 0:
                self.head = lf + 1
                return
            self.head = self.tail
            await self.fill()

    # ---- output

    def put(self, data):
        """Queues bytes for sending (never waits). Loops that queue a lot send when `full()`;
        what does not fit even then is kept aside and sent after the buffer."""
        n = len(data)
        if not self.overflow and self.outlen + n > len(self.outbuf):
            self.push()
            if self.sent:  # keep what the socket did not take, at the front
                rest = self.outlen - self.sent
                view = memoryview(self.outbuf)
                view[0:rest] = view[self.sent : self.outlen]
                self.outlen = rest
                self.sent = 0
        if self.overflow or self.outlen + n > len(self.outbuf):
            self.overflow += data  # rare: a slow client and a large reply
            return
        self.outbuf[self.outlen : self.outlen + n] = data
        self.outlen += n

    def queued(self, n):
        """Declares that the output buffer holds n queued octets: the caller wrote the new ones
        straight into it, after those queued (none of them sent yet)."""
        self.outlen = n

    def mark(self):
        """Where the output stands, before a reply is made (see `rewind`)."""
        return self.pushed, self.outlen, len(self.overflow)

    def rewind(self, mark):
        """Forgets what was queued since `mark`, the start of a reply that cannot be finished;
        False when part of it may have been sent already (the reply can only be cut off)."""
        if self.pushed != mark[0] or len(self.overflow) != mark[2] or self.outlen < mark[1]:
            return False
        self.outlen = mark[1]
        return True

    def drop_output(self):
        """Forgets everything queued and not sent yet."""
        self.outlen = self.sent = 0
        self.overflow = b""

    def full(self):
        """True when the output buffer is more than half full."""
        return self.outlen > len(self.outbuf) >> 1

    def push(self):
        """Writes what the socket takes now of the queued output; True when all of it went.
        Raises OSError (EPIPE, ECONNRESET) when the peer is gone."""
        while self.sent < self.outlen:
            n = self.sock.write(self.outbuf, self.sent, self.outlen - self.sent)
            if not n:
                return False
            self.sent += n
            self.pushed += 1
            self.last_active = time.ticks_ms()
        self.sent = self.outlen = 0
        while self.overflow:
            n = self.sock.write(self.overflow)
            if not n:
                return False
            self.overflow = self.overflow[n:]
            self.pushed += 1
            self.last_active = time.ticks_ms()
        return True

    async def flush(self):
        """Sends everything queued, waiting while the client does not read."""
        pause = 0
        while True:
            progress = self.last_active
            if self.push():
                return
            pause = 0 if self.last_active != progress else min(pause * 2 + 1, _MAX_SEND_PAUSE_MS)
            await asyncio.sleep_ms(pause)

    async def close(self):
        try:
            await self.stream.wait_closed()
        except OSError:
            pass

    def close_now(self):
        """Closes the socket without a coroutine, where the heap has no room for one."""
        try:
            self.sock.close()
        except OSError:
            pass
