# A client connection: a bounded line reader and a coalescing writer over one asyncio stream.
#
# Every byte a client sends lands in one buffer allocated when the connection opens; lines are
# found with bytearray.find (one read() per chunk, not one per byte as Stream.readline does) and
# a line longer than the caller's limit is thrown away as it arrives, never accumulated.
# Replies are copied into one output buffer and sent when the session next waits for input, so a
# multi-line reply or a batch of pipelined replies leaves in one write (Nagle + delayed ACK cost
# ~40 ms per extra write on loopback, and lwIP on the ESP32 has Nagle on too).
import socket
import time

from micropython import const

_LF = const(10)
_CR = const(13)
# socket.IPPROTO_TCP / TCP_NODELAY are missing from some ports' socket module; the values are
# the same on Linux and lwIP.
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)


class Closed(Exception):
    """The peer closed the connection (or reset it)."""


def set_nodelay(stream):
    # Reaches into the stream for its socket: asyncio streams expose no socket option API.
    try:
        stream.s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    except (AttributeError, OSError):  # pragma: no cover - a port without the option
        pass


class Slot:
    """The buffers of one client connection, allocated once at boot so a connection never needs
    a large block from a fragmented heap."""

    # Octets of client input held at once: the longest command line and the chunk in which
    # DATA is read.
    IN_SIZE = 1024
    # Octets of replies coalesced before a write.
    OUT_SIZE = 1024
    # Octets read from a file at a time (RETR, TOP, the index, copies).
    SCRATCH_SIZE = 512

    def __init__(self):
        self.inbuf = bytearray(self.IN_SIZE)
        self.outbuf = bytearray(self.OUT_SIZE)
        self.scratch = bytearray(self.SCRATCH_SIZE)
        self.inmv = memoryview(self.inbuf)
        self.outmv = memoryview(self.outbuf)


class Connection:
    def __init__(self, stream, slot):
        self.stream = stream
        self.slot = slot
        self.inbuf = slot.inbuf
        self.inmv = slot.inmv
        # The unread input is inbuf[head:tail].
        self.head = 0
        self.tail = 0
        self.outbuf = slot.outbuf
        self.outmv = slot.outmv
        self.outlen = 0
        # ticks_ms of the last progress in either direction; the server's reaper reads it.
        self.last_active = time.ticks_ms()

    # ---- input

    def buffered(self):
        """Number of received bytes not consumed yet."""
        return self.tail - self.head

    async def fill(self):
        """Reads at least one more byte after the unread ones; returns how many were read.

        Pending output is sent first: a client that pipelines waits for those replies. Raises
        Closed at end of stream. The caller must leave room (see `compact`)."""
        if self.outlen:
            await self.flush()
        if self.head == self.tail:
            self.head = self.tail = 0
        elif self.tail == len(self.inbuf):
            self.compact()
        while True:
            try:
                n = await self.stream.readinto(self.inmv[self.tail :])
            except OSError:  # ECONNRESET and friends end the session like a close
                raise Closed()
            # None is EAGAIN after a spurious wake-up; only 0 is the end of the stream.
            if n is None:
                continue
            if n == 0:
                raise Closed()
            self.tail += n
            self.last_active = time.ticks_ms()
            return n

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
        """Queues bytes for sending. Loops that queue a lot call `flush` when `full()`; a put
        that does not fit hands the buffer to the stream at once, which keeps what the socket
        does not take."""
        n = len(data)
        if self.outlen + n > len(self.outbuf):
            self._spill()
            if n > len(self.outbuf):
                self.stream.write(data)
                return
        self.outbuf[self.outlen : self.outlen + n] = data
        self.outlen += n

    def full(self):
        """True when the output buffer is more than half full."""
        return self.outlen > len(self.outbuf) >> 1

    def _spill(self):
        if self.outlen:
            self.stream.write(self.outmv[: self.outlen])
            self.outlen = 0

    async def flush(self):
        """Sends everything queued and waits until the socket has taken it."""
        try:
            self._spill()
            await self.stream.drain()
        except OSError:  # EPIPE / ECONNRESET: the peer is gone
            raise Closed()
        self.last_active = time.ticks_ms()

    async def close(self):
        try:
            await self.stream.wait_closed()
        except OSError:
            pass
