"""Client of the firmware's console service (docs/console-protocol.md).

A request is one line ``PP> ID COMMAND JSON``; the reply ``PP< ID ok JSON`` or
``PP< ID err CODE "message"``, after zero or more ``PP< ID part JSON`` frames when the reply is a
list streamed item by item (the ``ok`` frame's ``parts`` names the key they are gathered under;
with ``"object": true`` each part is a one-entry object and they are merged into one). Any other line the board prints (logs, tracebacks) is handed to
``on_line`` and otherwise ignored, so interleaved log output never confuses a request.
"""

import itertools
import json
import os
import time

from .errors import BoardError, BoardTimeout, PocketpostError

REQUEST_PREFIX = "PP> "
REPLY_PREFIX = "PP< "
# The firmware discards longer request lines (console.MAX_REQUEST).
MAX_REQUEST = 1024
DEFAULT_TIMEOUT = 5.0
# A board short of memory answers NOMEM having done nothing: the request is sent again after
# each of these pauses (7.5 s in all: a pass of the relay or the collector, or a client's
# delivery, can hold the board's heap for seconds; at 160k a relay board's queue.list met NOMEM
# four times in 1.5 s while the relay's pass for a message just queued ran).
NOMEM_PAUSES_S = (0.5, 1.0, 2.0, 4.0)
NOMEM_RETRIES = len(NOMEM_PAUSES_S)


class ConsoleClient:
    """Sends requests over a pyserial-like port (``read``, ``write``, ``timeout``,
    ``in_waiting``) and waits for the matching replies."""

    def __init__(self, port, timeout=DEFAULT_TIMEOUT, on_line=None):
        self.port = port
        self.timeout = timeout
        self.on_line = on_line
        self.nomem_retries = NOMEM_RETRIES  # tests set 0 to see a NOMEM answer
        self._pending = bytearray()
        # Ids unique per client and unlikely to match a stale reply of an earlier client.
        self._ids = itertools.count(int.from_bytes(os.urandom(2), "big"))

    def request(self, command, args=None, timeout=None):
        """Sends one request and returns the reply's JSON value; raises BoardError when the
        board answers with an error and BoardTimeout when it does not answer. A NOMEM answer
        (the board's heap is short for a moment) is retried a few times first."""
        for attempt in range(self.nomem_retries + 1):
            try:
                return self._request_once(command, args, timeout)
            except BoardError as e:
                if e.code != "NOMEM" or attempt == self.nomem_retries:
                    raise
                time.sleep(NOMEM_PAUSES_S[attempt])

    def _request_once(self, command, args, timeout):
        rid = f"h{next(self._ids)}"
        line = f"{REQUEST_PREFIX}{rid} {command} {json.dumps(args or {}, separators=(',', ':'))}\n"
        if len(line) > MAX_REQUEST:
            raise PocketpostError(f"request {command} is {len(line)} bytes; the console takes {MAX_REQUEST}")
        self.port.write(line.encode())
        if hasattr(self.port, "flush"):
            self.port.flush()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        parts_seen = []
        while True:
            text = self.read_line(deadline)
            if text is None:
                raise BoardTimeout(f"the board did not answer {command} within {self.timeout if timeout is None else timeout:g} s")
            if not text.startswith(REPLY_PREFIX):
                if self.on_line is not None:
                    self.on_line(text)
                continue
            parts = text[len(REPLY_PREFIX):].split(" ", 2)
            if len(parts) < 3 or parts[0] != rid:
                continue  # a reply to an earlier client's request
            if parts[1] in ("part", "ok"):
                try:
                    value = json.loads(parts[2])
                except ValueError:
                    continue  # a frame the board cut short (out of memory): its err line follows
            if parts[1] == "part":
                parts_seen.append(value)
                continue
            if parts[1] == "ok":
                result = value
                if isinstance(result, dict) and "parts" in result:
                    if result.pop("object", False):  # one-entry objects, merged
                        result[result.pop("parts")] = {k: v for part in parts_seen for k, v in part.items()}
                    else:
                        result[result.pop("parts")] = parts_seen
                return result
            code, _, message = parts[2].partition(" ")
            try:
                message = json.loads(message)
            except ValueError:
                pass
            raise BoardError(code, message)

    def read_line(self, deadline):
        """The next console line without its line end, or None at the deadline."""
        while True:
            nl = self._pending.find(b"\n")
            if nl >= 0:
                raw = bytes(self._pending[:nl])
                del self._pending[: nl + 1]
                return raw.rstrip(b"\r").decode("utf-8", "replace")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.port.timeout = min(left, 0.25)
            waiting = getattr(self.port, "in_waiting", 0) or 1
            self._pending += self.port.read(waiting)


class PipePort:
    """A pyserial-like port over a pair of file descriptors (a child's stdout and stdin)."""

    def __init__(self, read_fd, write_fd):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.timeout = 1.0

    @property
    def in_waiting(self):
        import fcntl
        import termios
        import struct

        try:
            return struct.unpack("i", fcntl.ioctl(self.read_fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def read(self, n=1):
        import select

        ready, _, _ = select.select([self.read_fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.read_fd, n)
        except OSError:
            return b""

    def write(self, data):
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]
        return len(data)
