# The console's requests (docs/console-protocol.md): reading one and answering it. The console
# (console.py) loads this package for each request, with the module of the request's area (one
# module per area, requests/*.py), and unloads both after it: no request's code stays in the heap
# between requests.
#
# A reply made of many items (log lines, users, mailboxes, settings) is streamed: one
# "PP< <id> part <json>" frame per item, then the "ok" frame, so no reply needs a block of heap
# proportional to the data. JSON escapes control characters, so no frame ever holds a line end
# or Ctrl-C.
import json
import sys

from micropython import const

from ..console import MAX_ID, REQUEST

PROTOCOL = const(1)


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
# "_" for "." (user.add: requests/users.py, user_add).
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
    "relay.ca.begin": "relay", "relay.ca.chunk": "relay", "relay.ca.commit": "relay", "relay.ca.show": "relay",
}


def _handler(command):
    """The function answering `command` (its module loaded now), or None for an unknown one."""
    area = _ROUTES.get(command)
    if area is None and command[:8] == "collect.":
        area = "collect"  # collect.list, .add, .del, .now, .clock: no entries (heap) of their own
    if area is None and command == "relay.clock":
        area = "relay"  # the emulated board's test hook (requests/relay.py)
    if area is None:
        return None
    module = __import__("pocketpost.requests." + area, None, None, (area,))
    return getattr(module, command.replace(".", "_"))


def _unload_handlers():
    # The request's area's module and what it loaded for itself: this package stays (its
    # RequestError is the one the handlers raise).
    from ..console import unload_requests

    unload_requests(keep_package=True)


def answer(console, rid, line):
    """Reads request `line` (id `rid`) and answers it on the console."""
    app = console.app
    parts = line[len(REQUEST) :].split(b" ", 2)
    try:
        parts[0].decode()  # an id that is not UTF-8 is a malformed request, answered with "-"
        if len(parts) < 2 or not 0 < len(parts[0]) <= MAX_ID:
            raise RequestError("BADREQ", "a request is: PP> ID COMMAND [JSON]")
        args = json.loads(parts[2]) if len(parts) == 3 else {}
        if not isinstance(args, dict):
            raise RequestError("BADREQ", "arguments must be a JSON object")
        command = parts[1].decode()
        parts = None
        try:
            _answer(console, rid, command, args)
        except MemoryError:
            if not console.redo:
                raise
            # The request ran short before it changed anything or sent a frame (handlers
            # make their one change last): it runs once more, with the heap relieved.
            _unload_handlers()
            app.relieve_memory()
            app.log.warn("console", "request ran short of memory, run again")
            _answer(console, rid, command, args)
    except MemoryError:
        raise  # the console answers it (console.py): nothing was changed
    except RequestError as e:
        _error(console, rid, e.code, str(e))
    except (ValueError, UnicodeError) as e:
        _error(console, rid, "BADREQ", "malformed request: {}".format(e))
    except OSError as e:
        _error(console, rid, "STORAGE", "storage error {}".format(e))
    except Exception as e:
        sys.print_exception(e)  # the traceback goes to the console for whoever looks
        app.log.exception("console", "request failed", e)
        _error(console, rid, "INTERNAL", "{}: {}".format(type(e).__name__, e))


def _answer(console, rid, command, args):
    # console.redo: nothing is changed or sent yet, so a shortage may be met by running the
    # request again. A reply streamed as parts comes from a handler that changes nothing.
    console.redo = True
    result = _run(console, rid, command, args)
    if result is None:
        return  # debug.hold: the console answers once the heap is held
    if isinstance(result, Streamed):
        # The host drops the parts of a reply that fails part-way.
        for item in result.items:
            _frame(console, rid, " part ", item)
        result.rest["parts"] = result.key
        result = result.rest
    console.redo = False
    _frame(console, rid, " ok ", result)


def _run(console, rid, command, args):
    app = console.app
    if command == "debug.hold" and app.board.debug_requests:
        from .debug import hold  # the emulated board's test hook (requests/debug.py)

        return hold(console, rid, args)
    handler = _handler(command)
    if handler is None:
        raise RequestError("UNKNOWN", "unknown command; known: " + " ".join(sorted(_ROUTES)))
    app.hold_point("console")  # the test hook's shortage lasts until the reply is written (console.py)
    return handler(app, args)


def _frame(console, rid, kind, value):
    # The JSON goes to the console as it is made (json.dump writes to the stream piece by
    # piece): a reply never needs a block of heap as long as itself.
    out = console.out
    console.framing = True
    console.redo = False
    out.write("PP< ")
    out.write(rid)
    out.write(kind)
    json.dump(value, out)
    out.write("\n")
    console.framing = False


def _error(console, rid, code, message):
    if console.framing:
        console.out.write("\n")  # ends the frame cut short, which the host cannot parse
    _frame(console, rid, " err " + code + " ", message)
