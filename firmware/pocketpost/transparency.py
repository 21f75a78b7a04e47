# Dot-stuffing, both ways (RFC 5321 §4.5.2, RFC 1939 §3), streamed through fixed buffers.
#
# Received mail is stored in wire form: CRLF line ends, dots unstuffed. So the size of a stored
# file is exactly what RETR sends before byte-stuffing.
#
# Policy for what RFC 5321 forbids but clients send (documented in docs/protocols.md):
# - End of data is CRLF "." CRLF only. A "." line after a bare LF or bare CR does not end the
#   message (no SMTP smuggling, CVE-2023-51764 / CVE-2024-27305); it is content.
# - A bare LF or a bare CR is stored as CRLF, so every stored line ends in CRLF. Neither starts a
#   line for dot-unstuffing: only a real CRLF does.
# - Lines longer than 1000 octets are kept whole: nothing is split or truncated.
#
# Both directions pass buffer offsets rather than slices (a memoryview slice is an allocation),
# and read or write the socket directly while it has data or room (see netio.py); they yield to
# the other tasks every few chunks, since then they never wait.
import asyncio
import time

from micropython import const

_LF = const(10)
_CR = const(13)
_DOT = const(46)
# Longest stretch (ms) a transfer keeps the processor while its peer keeps up. Each pass
# through the asyncio scheduler allocates (its Python frames are larger than MicroPython keeps
# on the C stack), so yielding by time rather than per chunk keeps a fast transfer
# allocation-free and still lets the other clients in every few milliseconds.
_TURN_MS = const(20)


class _Data:
    # The state of a DATA body being received. A class, not a closure: MicroPython allocates
    # an argument array on each call of a closure with more than five values passed or captured.
    def __init__(self, sink, limit):
        self.sink = sink
        self.limit = limit
        self.size = 0
        self.writing = True  # until the message is too big or the sink failed

    def emit(self, data, off, n):
        if n:
            self.size += n
            if self.size > self.limit:
                self.writing = False
            elif self.writing:
                self.sink.write(data, off, n)


async def receive_data(conn, sink, limit):
    """Reads a DATA body from `conn` up to and including CRLF.CRLF. Writes the message with
    `sink.write(buf, off, n)` until it has passed `limit` octets or the sink failed (the error
    goes to `sink.failed`), but keeps reading to the end. Returns the octets the message has
    (more than `limit` when it was too big)."""
    # One coroutine with the scan inline: its frame is allocated once. A function called per
    # chunk with this many locals, or with a try block, would get a new heap frame each call
    # (see netio.py).
    buf = conn.inbuf
    data = _Data(sink, limit)
    emit = data.emit
    sol = True  # at the start of a line: the CRLF of the DATA command counts
    turn = time.ticks_ms()
    while True:
        i = conn.head
        n = conn.tail
        a = i  # start of the bytes read but not emitted yet
        start_sol = sol
        start_size = data.size
        try:
            while i < n:
                if sol:
                    if buf[i] == _DOT:
                        if n - i < 3 and (n - i == 1 or buf[i + 1] == _CR):
                            break  # need to see whether this is ".\r\n"
                        if buf[i + 1] == _CR and buf[i + 2] == _LF:
                            emit(buf, a, i - a)
                            conn.head = i + 3
                            return data.size
                        emit(buf, a, i - a)  # a stuffed dot: drop it
                        a = i + 1
                        i += 1
                    sol = False
                lf = buf.find(b"\n", i, n)
                if lf > i and buf[lf - 1] == _CR and buf.find(b"\r", i, lf - 1) < 0:
                    sol = True  # the usual line, ending in its only CR and an LF: kept as is
                    i = lf + 1
                    continue
                end = lf if lf >= 0 else n
                if lf < 0 and buf[n - 1] == _CR:
                    end = n - 1  # this CR may be the start of a CRLF
                if lf > i and buf[lf - 1] == _CR:
                    end = lf - 1
                    sol = True
                # Bare CRs before `end` become CRLF.
                cr = buf.find(b"\r", i, end)
                while cr >= 0:
                    emit(buf, a, cr + 1 - a)
                    emit(b"\n", 0, 1)
                    a = cr + 1
                    cr = buf.find(b"\r", a, end)
                if lf < 0:
                    i = end
                    break
                if not sol:  # a bare LF becomes CRLF
                    emit(buf, a, lf - a)
                    emit(b"\r", 0, 1)
                    a = lf
                i = lf + 1
            emit(buf, a, i - a)
        except OSError as e:
            # The card failed (full): go over this chunk again writing nothing, then read on.
            sink.failed(e)
            data.writing = False
            data.size = start_size
            sol = start_sol
            continue
        conn.head = i
        if time.ticks_diff(time.ticks_ms(), turn) > _TURN_MS:
            await asyncio.sleep_ms(0)
            turn = time.ticks_ms()
        if not conn.take():
            # The next segment is usually on its way: look again after the other tasks had a
            # turn before waiting on the socket, which allocates more.
            await asyncio.sleep_ms(0)
            if not conn.take():
                await conn.fill()


async def send_file(conn, f):
    """Sends file `f` as the body of a multi-line response: byte-stuffed, then CRLF.CRLF.

    The file is read straight into the connection's output buffer and the dots are inserted
    there: no copy, and nothing allocated unless a line starts with a dot. The first chunk goes
    after what is queued already (the status line), so a short message leaves in one write. A
    chunk that needs dots and would not fit with them is read again as half the room, which
    always fits (n octets hold at most n / 2 "\n." pairs)."""
    out = conn.outbuf
    view = memoryview(out)
    size = len(out)
    last = _LF  # the byte before the next one: a "." after LF gets stuffed
    turn = time.ticks_ms()
    # Where the next chunk goes: after the queued replies while they leave at least half the
    # buffer (and nothing is waiting behind them), else at the start of the emptied buffer.
    start = conn.outlen
    if conn.sent or conn.overflow or start > size >> 1:
        start = 0
    while True:
        if not start:
            if not conn.push():
                await conn.flush()
                turn = time.ticks_ms()
            elif time.ticks_diff(time.ticks_ms(), turn) > _TURN_MS:
                await asyncio.sleep_ms(0)
                turn = time.ticks_ms()
        n = f.readinto(view[start:] if start else out)
        if not n:
            break
        room = size - start
        end = start + n
        at = start if last == _LF and out[start] == _DOT else -1
        if at < 0:
            at = out.find(b"\n.", start, end)
            if at >= 0:
                at += 1
        if at >= 0 and n > room >> 1:
            f.seek((room >> 1) - n, 1)  # dots to insert: take half the room instead
            end = start + (room >> 1)
            if at >= end:
                at = -1
        while at >= 0:  # insert a dot before out[at]
            view[at + 1 : end + 1] = view[at:end]
            end += 1
            at = out.find(b"\n.", at + 2, end)
            if at >= 0:
                at += 1
        last = out[end - 1]
        conn.queued(end)
        start = 0
    _finish(conn, last)


async def send_top(conn, f, buf, body_lines):
    """Sends the header, the blank line after it and `body_lines` lines of the body (POP3
    TOP), byte-stuffed, then CRLF.CRLF."""
    mv = memoryview(buf)
    last = _LF
    line_len = 0  # octets of the current line seen so far
    in_header = True
    sent_body = 0
    done = False
    while not done:
        n = f.readinto(buf)
        if not n:
            break
        a = 0
        i = 0
        while i < n:
            if line_len == 0:
                if not in_header:
                    if sent_body == body_lines:
                        done = True
                        break
                    sent_body += 1
                if buf[i] == _DOT:
                    conn.put(mv[a:i])
                    conn.put(b".")
                    a = i
            lf = buf.find(b"\n", i, n)
            if lf < 0:
                line_len += n - i
                i = n
                break
            line_len += lf + 1 - i
            before_lf = buf[lf - 1] if lf else last
            if in_header and line_len <= 2 and (line_len == 1 or before_lf == _CR):
                in_header = False  # the blank line ends the header and is sent
            line_len = 0
            i = lf + 1
        conn.put(mv[a:i])
        last = buf[i - 1] if i else last
        if conn.full() and not conn.push():
            await conn.flush()
    _finish(conn, last)


def _finish(conn, last):
    if last != _LF:
        conn.put(b"\r\n")  # a file that does not end with a line end gets one
    conn.put(b".\r\n")
