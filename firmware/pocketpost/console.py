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
from .heap import OCCASIONAL
from .heap import restore as restore_reserve

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


def arg(args, key, kind, required=True):
    """Argument `key` of a request, checked to be of type `kind` (None when optional and absent)."""
    value = args.get(key)
    if value is None:
        if required:
            raise RequestError("INVALID", "missing argument {}".format(key))
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError("INVALID", "argument {} has the wrong type".format(key))
    return value


# command: the module of requests/ that answers it, with a function named as the command with
# "_" for "." (user.add: requests/users.py, user_add). The module is loaded for the request and
# unloaded after it: requests are rare, and each area's code would otherwise stay in the heap.
_ROUTES = {
    "hello": "board",
    "info": "board",
    "log.tail": "board",
    "reboot": "board",
    "user.add": "users",
    "user.del": "users",
    "user.passwd": "users",
    "user.list": "users",
    "user.check": "users",
    "config.get": "config",
    "config.set": "config",
    "mailbox.stats": "mailbox",
    "tls.begin": "tls_install",
    "tls.chunk": "tls_install",
    "tls.commit": "tls_install",
    "tls.show": "tls",
    "queue.list": "queue", "queue.show": "queue", "queue.flush": "queue", "queue.delete": "queue",
    "relay.ca.begin": "queue", "relay.ca.chunk": "queue", "relay.ca.commit": "queue", "relay.ca.show": "queue",
}


def _handler(command):
    """The function answering `command` (its module loaded now), or None for an unknown one."""
    area = _ROUTES.get(command)
    if area is None and command[:8] == "collect.":
        area = "collect"  # collect.list, .add, .del, .now, .clock: no entries (heap) of their own
    if area is None and command == "relay.clock":
        area = "queue"  # the emulated board's test hook (requests/queue.py)
    if area is None:
        return None
    module = __import__("pocketpost.requests." + area, None, None, (area,))
    return getattr(module, command.replace(".", "_"))


def _unload_handlers():
    # The request's area's module and what requests load for themselves (the settings' schema,
    # the certificate parser): nothing a request leaves in use.
    for name in OCCASIONAL:
        if name.startswith("pocketpost.requests.") or name in _REQUEST_ONLY:
            unload(name)
    unload("pocketpost.requests.collect")  # (not interned at boot: a board may never collect)


_REQUEST_ONLY = ("pocketpost.config_schema", "pocketpost.x509")


class Console:
    def __init__(self, app, stream, out, buf):
        self.app = app
        self.stream = stream  # an asyncio stream over the console input
        self.out = out  # the console output, a text stream
        self.buf = buf  # MAX_REQUEST octets for the request being read
        self.framing = False  # part of a frame is written, not its line end
        self.redo = False  # the request being answered can run again (see _answer)

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
            command = parts[1].decode()
            try:
                self._answer(rid, command, args)
            except MemoryError:
                if not self.redo:
                    raise
                # The request ran short before it changed anything or sent a frame (handlers
                # make their one change last): it runs once more, with the heap relieved.
                _unload_handlers()
                self.app.relieve_memory()
                self.app.log.warn("console", "request ran short of memory, run again")
                self._answer(rid, command, args)
        except MemoryError:
            # A temporary shortage: the request did nothing, and the host may send it again.
            parts = None
            _unload_handlers()
            self.app.relieve_memory()
            out = self.out  # written in constant pieces: nothing to allocate
            if self.framing:
                out.write("\n")  # ends the frame cut short, which the host cannot parse
                self.framing = False
            out.write("PP< ")
            out.write(rid)
            out.write(' err NOMEM "not enough memory for this request now, try again later"\n')
            self.app.log.warn("console", "request refused: not enough memory")
        except RequestError as e:
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
            self.app.held_next = None  # the test hook's shortage for this request, if any
            _unload_handlers()
            if not self.app.sessions:
                restore_reserve()

    def _answer(self, rid, command, args):
        # self.redo: nothing is changed or sent yet, so a shortage may be met by running the
        # request again. A reply streamed as parts comes from a handler that changes nothing.
        self.redo = True
        result = self._run(command, args)
        if isinstance(result, Streamed):
            # The host drops the parts of a reply that fails part-way.
            for item in result.items:
                self._frame(rid, " part ", item)
            result.rest["parts"] = result.key
            result = result.rest
        self.redo = False
        self._frame(rid, " ok ", result)

    def _run(self, command, args):
        app = self.app
        if command == "debug.hold" and app.board.debug_requests:
            return self._hold(args)  # here, not in requests/: it must work with the heap held
        handler = _handler(command)
        if handler is None:
            raise RequestError("UNKNOWN", "unknown command; known: " + " ".join(sorted(_ROUTES)))
        if app.hold_next is not None and app.hold_next[0] == "console":
            app.hold_for_next()  # the shortage lasts until the reply is written (_request)
        return handler(app, args)

    def _hold(self, args):
        # Test hook: {"leave": N} holds heap until N octets are free; with "next": "console",
        # "pop3" or "smtp" (true: the console) only while the next request or the next command
        # of a session of that protocol runs, "tls" as the next implicit-TLS client's TLS socket
        # is made, "handshake" from then through its greeting: until the heap is first
        # relieved, or with "lasting": true until that command or request ends, its redo
        # included; {} lets go.
        leave = args.get("leave")
        target = args.get("next")
        self.app.held = self.app.held_next = self.app.hold_next = None
        if leave is not None and not isinstance(leave, int):
            raise RequestError("INVALID", "argument leave has the wrong type")
        if target is True:
            target = "console"
        if target not in (None, "console", "pop3", "smtp", "tls", "handshake"):
            raise RequestError("INVALID", "next must be console, pop3, smtp, tls or handshake")
        if target is not None and leave is not None:
            self.app.hold_next = (target, leave, bool(args.get("lasting")))
        elif leave is not None:
            from .heap import hold

            self.app.held = hold(leave)
        gc.collect()
        return {"heap_free": gc.mem_free()}

    def _frame(self, rid, kind, value):
        # The JSON goes to the console as it is made (json.dump writes to the stream piece by
        # piece): a reply never needs a block of heap as long as itself.
        out = self.out
        self.framing = True
        self.redo = False
        out.write("PP< ")
        out.write(rid)
        out.write(kind)
        json.dump(value, out)
        out.write("\n")
        self.framing = False

    def _error(self, rid, code, message):
        if self.framing:
            self.out.write("\n")  # ends the frame cut short, which the host cannot parse
        self._frame(rid, " err " + code + " ", message)
