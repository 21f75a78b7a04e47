# The console service: provisioning requests over the serial console while the servers run.
#
# A request is one line "PP> <id> <command> [<json object>]"; its reply is one line
# "PP< <id> ok <json>" or "PP< <id> err <CODE> <json string>". Every other line on the console
# (log lines, tracebacks, a person typing) is not a frame; hosts skip such lines. See
# docs/console-protocol.md.
#
# Only the reading of lines lives here, with the answer for a request that finds no heap: the
# code that reads a request and answers it (requests/__init__.py, with the module of the
# request's area) is loaded for each request and unloaded after it. Requests are rare, and that
# code (~5 KB of heap on a 64-bit port) would otherwise stay in the heap between them.
import asyncio
import gc
import json

from micropython import const

from . import unload
from .heap import OCCASIONAL
from .heap import restore as restore_reserve

# Longest request line; longer input is discarded up to its line end.
MAX_REQUEST = const(1024)
# What starts a request line.
REQUEST = b"PP> "
# Longest request id.
MAX_ID = const(16)
_CTRL_C = const(3)


class Console:
    def __init__(self, app, stream, out, buf):
        self.app = app
        self.stream = stream  # an asyncio stream over the console input
        self.out = out  # the console output, a text stream
        self.buf = buf  # MAX_REQUEST octets for the request being read
        self.framing = False  # part of a frame is written, not its line end
        self.redo = False  # the request being answered can run again (requests.answer)
        self.hold = None  # debug.hold's octets to leave free, taken once the request's code is gone
        self.hold_id = "-"  # and the id of that request, answered then

    async def serve(self):
        """Reads the console one byte at a time: on a raw pty a line read would block the whole
        event loop until a line end arrived."""
        buf = self.buf
        length = 0
        overlong = False
        while True:
            try:
                b = await self.stream.read(1)
            except MemoryError:  # the heap is short for a moment: the console lives on
                gc.collect()
                await asyncio.sleep_ms(10)
                continue
            if b is None:
                continue
            if not b:
                return  # the console was closed (unix board with stdin at its end)
            c = b[0]
            if c == _CTRL_C:
                # What the board's UART does with Ctrl-C: stop the program (the REPL follows).
                raise KeyboardInterrupt()
            if c == 10:
                if not overlong and length:
                    try:
                        self._request(bytes(memoryview(buf)[:length]))
                    except MemoryError:
                        # Not even the error reply could be made: the console task lives on.
                        gc.collect()
                length = 0
                overlong = False
            elif c != 13:
                if length < MAX_REQUEST:
                    buf[length] = c
                    length += 1
                else:
                    overlong = True

    def _request(self, line):
        if not line.startswith(REQUEST):
            return
        app = self.app
        if app.held is not None and b" debug.hold" in line:
            # The test hook lets go of what it held before anything else (requests/debug.py):
            # its code is loaded from the heap it held.
            app.held = None
            gc.collect()
        try:
            from .requests import answer

            answer(self, _request_id(line), line)
        except MemoryError:
            # A temporary shortage, met before the request changed anything (requests.answer
            # answers any later one itself): the host may send it again.
            answer = None
            unload_requests()
            app.relieve_memory()
            out = self.out  # written in constant pieces: nothing to allocate
            if self.framing:
                out.write("\n")  # ends the frame cut short, which the host cannot parse
                self.framing = False
            out.write("PP< ")
            out.write(_request_id(line))
            out.write(' err NOMEM "not enough memory for this request now, try again later"\n')
            app.log.warn("console", "request refused: not enough memory")
        finally:
            answer = None
            app.held_next = None  # the test hook's shortage for this request, if any
            unload_requests()
            if self.hold is not None:
                self._hold()
            if not app.sessions:
                restore_reserve()

    def _hold(self):
        # Test hook (debug.hold {"leave": N}, emulated board only): the heap is held once the
        # request's code is unloaded, so that N octets are left free between requests.
        from .heap import hold

        leave = self.hold
        self.hold = None
        self.app.held = hold(leave)
        gc.collect()
        out = self.out
        out.write("PP< ")
        out.write(self.hold_id)
        out.write(" ok ")
        json.dump({"heap_free": gc.mem_free()}, out)
        out.write("\n")


def _request_id(line):
    """The id of request `line`, "-" when it has none that can be answered."""
    end = line.find(b" ", len(REQUEST))
    if end < 0:
        end = len(line)
    if not len(REQUEST) < end <= len(REQUEST) + MAX_ID:
        return "-"
    try:
        return line[len(REQUEST) : end].decode()
    except UnicodeError:
        return "-"


def unload_requests(keep_package=False):
    """Unloads the code of requests: the area modules (requests/), what they load for themselves
    (the settings' schema, the certificate parser), and (unless `keep_package`) the package that
    reads requests."""
    for name in OCCASIONAL:
        if name.startswith("pocketpost.requests.") or name in _REQUEST_ONLY:
            unload(name)
    unload("pocketpost.requests.collect")  # (not interned at boot: a board may never collect)
    unload("pocketpost.requests.debug")  # (nor the test hook's)
    if not keep_package:
        unload("pocketpost.requests")


_REQUEST_ONLY = ("pocketpost.config_schema", "pocketpost.x509")
