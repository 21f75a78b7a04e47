# Dot-stuffing, both ways (RFC 5321 §4.5.2, RFC 1939 §3), streamed through fixed buffers.
#
# Received mail is stored in wire form: CRLF line ends, dots unstuffed. So the size of a stored
# file is exactly what RETR sends before byte-stuffing.
#
# Policy for what RFC 5321 forbids but clients send (documented in docs/smtp.md):
# - End of data is CRLF "." CRLF only. A "." line after a bare LF or bare CR does not end the
#   message (no SMTP smuggling, CVE-2023-51764 / CVE-2024-27305); it is content.
# - A bare LF or a bare CR is stored as CRLF, so every stored line ends in CRLF. Neither starts a
#   line for dot-unstuffing: only a real CRLF does.
# - Lines longer than 1000 octets are kept whole: nothing is split or truncated.
from micropython import const

_LF = const(10)
_CR = const(13)
_DOT = const(46)


async def receive_data(conn, sink, limit):
    """Reads a DATA body from `conn` up to and including CRLF.CRLF. Writes the message to
    `sink.write` until it has passed `limit` octets and stops writing there, but keeps reading
    to the end. Returns the octets the message has (more than `limit` when it was too big)."""
    buf = conn.inbuf
    mv = conn.inmv
    size = 0
    sol = True  # at the start of a line: the CRLF of the DATA command counts

    def emit(data):
        nonlocal size
        n = len(data)
        if n:
            size += n
            if size <= limit:
                sink.write(data)

    while True:
        i = conn.head
        n = conn.tail
        a = i  # start of the bytes read but not emitted yet
        while i < n:
            if sol:
                if buf[i] == _DOT:
                    if n - i < 3 and (n - i == 1 or buf[i + 1] == _CR):
                        break  # need to see whether this is ".\r\n"
                    if buf[i + 1] == _CR and buf[i + 2] == _LF:
                        emit(mv[a:i])
                        conn.head = i + 3
                        return size
                    emit(mv[a:i])  # a stuffed dot: drop it
                    a = i + 1
                    i += 1
                sol = False
            lf = buf.find(b"\n", i, n)
            end = lf if lf >= 0 else n
            if lf < 0 and buf[n - 1] == _CR:
                end = n - 1  # this CR may be the start of a CRLF
            if lf > i and buf[lf - 1] == _CR:
                end = lf - 1
                sol = True
            # Bare CRs before `end` become CRLF.
            cr = buf.find(b"\r", i, end)
            while cr >= 0:
                emit(mv[a : cr + 1])
                emit(b"\n")
                a = cr + 1
                cr = buf.find(b"\r", a, end)
            if lf < 0:
                i = end
                break
            if not sol:  # a bare LF becomes CRLF
                emit(mv[a:lf])
                emit(b"\r")
                a = lf
            i = lf + 1
        emit(mv[a:i])
        conn.head = i
        await conn.fill()


async def send_file(conn, f, buf):
    """Sends file `f` as the body of a multi-line response: byte-stuffed, then CRLF.CRLF."""
    mv = memoryview(buf)
    last = _LF  # the byte before the next one: a "." after LF gets stuffed
    while True:
        n = f.readinto(buf)
        if not n:
            break
        a = 0
        if last == _LF and buf[0] == _DOT:
            conn.put(b".")
        j = buf.find(b"\n.", 0, n)
        while j >= 0:
            conn.put(mv[a : j + 1])
            conn.put(b".")
            a = j + 1
            j = buf.find(b"\n.", a, n)
        conn.put(mv[a:n])
        last = buf[n - 1]
        if conn.full():
            await conn.flush()
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
        if conn.full():
            await conn.flush()
    _finish(conn, last)


def _finish(conn, last):
    if last != _LF:
        conn.put(b"\r\n")  # a file that does not end with a line end gets one
    conn.put(b".\r\n")
