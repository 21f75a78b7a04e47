# One line per event: printed on the console and kept in a fixed ring of bytes for the console's
# `log.tail` (a ring of bytes, not of strings, so old lines leave no fragments in the heap).
import time

from micropython import const

_LF = const(10)


class Log:
    # Octets of recent log lines kept for `log.tail` (~25 lines).
    RING_SIZE = 2048
    # Longest line; longer messages are cut and marked with "...".
    MAX_LINE = 240

    def __init__(self, out):
        self.out = out  # the console: a text stream
        self.ring = bytearray(self.RING_SIZE)
        self.scratch = bytearray(self.MAX_LINE + 1)  # a line made without the heap (_without_heap)
        self.pos = 0  # where the next line goes
        self.wrapped = False
        self.start = time.ticks_ms()

    def uptime_ms(self):
        return time.ticks_diff(time.ticks_ms(), self.start)

    def _line(self, level, source, text):
        try:
            self._format(level, source, text)
        except MemoryError:
            self._without_heap(level, source, text)

    def _format(self, level, source, text):
        ms = self.uptime_ms()
        line = "{}.{:03d} {} {}: {}".format(ms // 1000, ms % 1000, level, source, text)
        if len(line) > self.MAX_LINE:
            line = line[: self.MAX_LINE - 3] + "..."
        # A log line never contains a line end or Ctrl-C: it stays one line on the console and
        # can never be mistaken for, or break, a console frame.
        if "\n" in line or "\r" in line or "\x03" in line:
            line = line.replace("\r", "\\r").replace("\n", "\\n").replace("\x03", "^C")
        self.out.write(line + "\n")  # one write: one system call on the unix board
        data = line.encode()
        self._keep(data, len(data))

    def _without_heap(self, level, source, text):
        # The heap is short (the line may say so): the same line is assembled byte by byte in
        # the scratch buffer made at start-up, and kept and written from there: nothing is
        # allocated (a line that says the heap ran short is written even with none left).
        buf = self.scratch
        ms = self.uptime_ms()
        n = _put_number(buf, 0, ms // 1000, 1)
        buf[n] = 46  # "."
        n = _put_number(buf, n + 1, ms % 1000, 3)
        n = _put_text(buf, n, " ")
        n = _put_text(buf, n, level)
        n = _put_text(buf, n, " ")
        n = _put_text(buf, n, source)
        n = _put_text(buf, n, ": ")
        n = _put_text(buf, n, text)
        self._keep(buf, n)
        buf[n] = _LF
        self.out.write(buf, n + 1)  # (a stream's write(buf, length): no slice made)

    def _keep(self, data, n):
        # Appends data[:n] and a line end to the ring, wrapping at its end.
        ring = self.ring
        size = len(ring)
        pos = self.pos
        if data is self.scratch:
            for i in range(n):  # octet by octet: a slice of the scratch buffer would be allocated
                ring[pos] = data[i]
                pos += 1
                if pos == size:
                    pos = 0
                    self.wrapped = True
        else:
            if pos + n < size:
                ring[pos : pos + n] = data
            else:
                first = size - pos
                ring[pos:] = data[:first]
                ring[: n - first] = data[first:]
                self.wrapped = True
            pos = (pos + n) % size
        ring[pos] = _LF
        pos += 1
        if pos == size:
            pos = 0
            self.wrapped = True
        self.pos = pos

    def info(self, source, text):
        self._line("INFO", source, text)

    def warn(self, source, text):
        self._line("WARN", source, text)

    def error(self, source, text):
        self._line("ERROR", source, text)

    def exception(self, source, text, exc):
        self._line("ERROR", source, "{}: {}: {}".format(text, type(exc).__name__, exc))

    def tail(self, n):
        """Yields the last `n` lines kept (oldest first), one at a time: the ring is read in
        place, so no copy of it nor a list of its lines is ever made. (Console handlers run
        without yielding to other tasks, so the ring does not change meanwhile.)"""
        ring = self.ring
        if self.wrapped:
            parts = ((self.pos, len(ring)), (0, self.pos))
        else:
            parts = ((0, self.pos),)
        # Complete lines in the ring: the oldest one is partly overwritten once it wrapped.
        complete = 0
        for start, end in parts:
            complete += ring.count(b"\n", start, end)
        skip = complete - max(0, min(n, complete - (1 if self.wrapped else 0)))
        pending = b""
        for start, end in parts:
            while start < end:
                nl = ring.find(b"\n", start, end)
                if nl < 0:
                    pending = bytes(ring[start:end])  # continues after the wrap
                    break
                line = pending + ring[start:nl]
                pending = b""
                start = nl + 1
                if skip:
                    skip -= 1
                else:
                    yield str(line, "utf-8")


def _put_number(buf, n, value, width):
    # Writes `value` in decimal at buf[n:], at least `width` digits; returns the end.
    digits = 1
    while value >= 10 ** digits:
        digits += 1
    digits = max(digits, width)
    for i in range(digits - 1, -1, -1):
        buf[n + i] = 48 + value % 10
        value //= 10
    return n + digits


def _put_text(buf, n, text):
    # Writes the printable ASCII of `text` at buf[n:] (other characters as "?"), cut at the end
    # of the buffer less one octet for the line end; returns the end. (By index: iterating a
    # str allocates its iterator, while an ASCII character is an interned string.)
    end = len(buf) - 1
    for i in range(len(text)):
        if n >= end:
            break
        c = ord(text[i])
        buf[n] = c if 32 <= c < 127 else 63
        n += 1
    return n
