# The console service: provisioning requests over the serial console while the servers run.
#
# A request is one line "PP> <id> <command> [<json object>]"; its reply is one line
# "PP< <id> ok <json>" or "PP< <id> err <CODE> <json string>". Every other line on the console
# (log lines, tracebacks, a person typing) is not a frame; hosts skip such lines. JSON escapes
# control characters, so no frame ever holds a line end or Ctrl-C. A reply made of many items
# (log lines, users, mailboxes, settings) is streamed: one "PP< <id> part <json>" frame per item,
# then the "ok" frame, so no reply needs a block of heap proportional to the data.
# See docs/console-protocol.md.
import asyncio
import gc
import json
import sys

from micropython import const

from . import unload
from .heap import hold
from .users import UserError

PROTOCOL = const(1)
# Longest request line; longer input is discarded up to its line end.
MAX_REQUEST = const(1024)
_REQUEST = b"PP> "
_CTRL_C = const(3)


class RequestError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Streamed:
    """A handler's reply whose list `key` is sent item by item (`items`: an iterable), each in
    its own "part" frame, before the "ok" frame with the rest of the reply (`rest`, a dict)."""

    def __init__(self, key, items, rest=None):
        self.key = key
        self.items = items
        self.rest = rest or {}


def _handlers():
    from .requests import HANDLERS

    return HANDLERS


class Console:
    def __init__(self, app, stream, out, buf):
        self.app = app
        self.stream = stream  # an asyncio stream over the console input
        self.out = out  # the console output, a text stream
        self.buf = buf  # MAX_REQUEST octets for the request being read
        self.hold_next = None  # the test hook debug.hold: heap to leave in the next request

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
        if not line.startswith(_REQUEST):
            return
        parts = line[len(_REQUEST) :].split(b" ", 2)
        rid = "-"
        try:
            # Decoded inside the try: a request id that is not UTF-8 is a bad request, not the
            # end of the console task.
            rid = parts[0].decode() if parts[0] else "-"
            if len(parts) < 2 or not 0 < len(parts[0]) <= 16:
                raise RequestError("BADREQ", "a request is: PP> ID COMMAND [JSON]")
            args = json.loads(parts[2]) if len(parts) == 3 else {}
            if not isinstance(args, dict):
                raise RequestError("BADREQ", "arguments must be a JSON object")
            result = self._run(parts[1].decode(), args)
            if isinstance(result, Streamed):
                # Each frame is made whole before it is written, so a shortage half-way never
                # leaves half a frame on the console; the host drops the parts of a failed reply.
                for item in result.items:
                    self.out.write("PP< {} part {}\n".format(rid, json.dumps(item)))
                result.rest["parts"] = result.key
                result = result.rest
            self.out.write("PP< {} ok {}\n".format(rid, json.dumps(result)))
        except MemoryError:
            # A temporary shortage. Handlers make their one change to the board last, so a
            # request that ran short did nothing and the host may send it again.
            result = parts = None
            self.app.relieve_memory()
            out = self.out  # written in constant pieces: nothing to allocate
            out.write("PP< ")
            out.write(rid)
            out.write(' err NOMEM "not enough memory for this request now, try again later"\n')
            self.app.log.warn("console", "request refused: not enough memory")
        except RequestError as e:
            self._error(rid, e.code, str(e))
        except UserError as e:
            self._error(rid, e.code, str(e))
        except (ValueError, UnicodeError) as e:
            self._error(rid, "BADREQ", "malformed request: {}".format(e))
        except OSError as e:
            self._error(rid, "STORAGE", "storage error {}".format(e))
        except Exception as e:
            sys.print_exception(e)  # the traceback goes to the console for whoever looks
            self.app.log.exception("console", "request failed", e)
            self._error(rid, "INTERNAL", "{}: {}".format(type(e).__name__, e))
        finally:
            # The handlers are loaded for each request and forgotten after it: requests are
            # rare, and their ~7 KB of code would otherwise stay in the heap for good.
            unload("pocketpost.requests")

    def _run(self, command, args):
        app = self.app
        if command == "debug.hold" and app.board.debug_requests:
            return self._hold(args)  # here, not in requests.py: it must work with the heap held
        handler = _handlers().get(command)
        if handler is None:
            raise RequestError("UNKNOWN", "unknown command; known: " + " ".join(sorted(_handlers())))
        if self.hold_next is None:
            return handler(app, args)
        app.held = hold(self.hold_next)  # the shortage is inside this request's handler only
        self.hold_next = None
        try:
            return handler(app, args)
        finally:
            app.held = None

    def _hold(self, args):
        # Test hook: {"leave": N} holds heap until N octets are free, now or, with "next":
        # true, in the next request only; {} lets it go.
        leave = args.get("leave")
        self.app.held = None
        if leave is not None and not isinstance(leave, int):
            raise RequestError("INVALID", "argument leave has the wrong type")
        if args.get("next"):
            self.hold_next = leave
        elif leave is not None:
            self.app.held = hold(leave)
        gc.collect()
        return {"heap_free": gc.mem_free()}

    def _error(self, rid, code, message):
        self.out.write("PP< {} err {} {}\n".format(rid, code, json.dumps(message)))
