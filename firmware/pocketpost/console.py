# The console service: provisioning requests over the serial console while the servers run.
#
# A request is one line "PP> <id> <command> [<json object>]"; its reply is one line
# "PP< <id> ok <json>" or "PP< <id> err <CODE> <json string>". Every other line on the console
# (log lines, tracebacks, a person typing) is not a frame; hosts skip such lines. JSON escapes
# control characters, so no frame ever holds a line end or Ctrl-C. See docs/console-protocol.md.
import gc
import json
import micropython
import sys

from micropython import const

from . import VERSION
from .config import SCHEMA
from .users import UserError, valid_name

PROTOCOL = const(1)
# Longest request line; longer input is discarded up to its line end.
MAX_REQUEST = const(1024)
_REQUEST = b"PP> "
_CTRL_C = const(3)


class RequestError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _arg(args, key, kind, required=True):
    value = args.get(key)
    if value is None:
        if required:
            raise RequestError("INVALID", "missing argument {}".format(key))
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError("INVALID", "argument {} has the wrong type".format(key))
    return value


class Console:
    def __init__(self, app, stream, out, buf):
        self.app = app
        self.stream = stream  # an asyncio stream over the console input
        self.out = out  # the console output, a text stream
        self.buf = buf  # MAX_REQUEST octets for the request being read
        self.handlers = {
            "hello": self.hello,
            "info": self.info,
            "user.add": self.user_add,
            "user.del": self.user_del,
            "user.passwd": self.user_passwd,
            "user.list": self.user_list,
            "config.get": self.config_get,
            "config.set": self.config_set,
            "mailbox.stats": self.mailbox_stats,
            "log.tail": self.log_tail,
            "reboot": self.reboot,
        }

    async def serve(self):
        """Reads the console one byte at a time: on a raw pty a line read would block the whole
        event loop until a line end arrived."""
        buf = self.buf
        length = 0
        overlong = False
        while True:
            b = await self.stream.read(1)
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
                    self._request(bytes(memoryview(buf)[:length]))
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
        rid = parts[0].decode() if parts[0] else "-"
        try:
            if len(parts) < 2 or not 0 < len(parts[0]) <= 16:
                raise RequestError("BADREQ", "a request is: PP> ID COMMAND [JSON]")
            args = json.loads(parts[2]) if len(parts) == 3 else {}
            if not isinstance(args, dict):
                raise RequestError("BADREQ", "arguments must be a JSON object")
            handler = self.handlers.get(parts[1].decode())
            if handler is None:
                raise RequestError("UNKNOWN", "unknown command; known: " + " ".join(sorted(self.handlers)))
            result = handler(args)
            # Written in pieces: a large reply never needs one large block of heap.
            self.out.write("PP< {} ok ".format(rid))
            json.dump(result, self.out)
            self.out.write("\n")
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

    def _error(self, rid, code, message):
        self.out.write("PP< {} err {} {}\n".format(rid, code, json.dumps(message)))

    # ---- requests

    def hello(self, args):
        return {"protocol": PROTOCOL, "firmware": VERSION, "board": self.app.board.name}

    def info(self, args):
        app = self.app
        gc.collect()
        info = {
            "firmware": VERSION,
            "board": app.board.name,
            "uptime_s": app.log.uptime_ms() // 1000,
            "heap_free": gc.mem_free(),
            "heap_used": gc.mem_alloc(),
            "hostname": app.config["hostname"],
            "domains": app.config["domains"],
            "bind": app.address,
            "ports": {"pop3": app.config["pop3_port"], "smtp": app.config["smtp_port"]},
            "clients": len(app.sessions),
            "users": len(app.users.names()),
        }
        info["storage"] = app.storage_info()
        # Bytes allocated since boot and the heap's high-water mark, where the port counts them
        # (MICROPY_MEM_STATS): allocation per message predicts GC pauses on a board.
        if hasattr(micropython, "mem_total"):
            info["heap_allocated_total"] = micropython.mem_total()
            info["heap_peak"] = micropython.mem_peak()
        info.update(app.board.info())
        return info

    def user_add(self, args):
        name = _arg(args, "name", str)
        self.app.users.add(name, _arg(args, "hash", str), _arg(args, "apop", str, False))
        self.app.log.info("console", "user {} added".format(name))
        return {"name": name}

    def user_del(self, args):
        name = _arg(args, "name", str)
        purge = _arg(args, "purge", bool, False)
        app = self.app
        if purge and name in app.store.locked:
            raise RequestError("BUSY", "mailbox {} is in use by a POP3 session".format(name))
        app.users.remove(name)
        if purge and app.storage_ready() and app.store.mailbox(name).exists():
            app.store.remove_mailbox(name)
        app.log.info("console", "user {} deleted{}".format(name, " with mailbox" if purge else ""))
        return {"name": name, "purged": bool(purge)}

    def user_passwd(self, args):
        name = _arg(args, "name", str)
        # "apop": a new secret, null to remove it, absent to keep it.
        apop = args["apop"] if "apop" in args else False
        if apop is not None and apop is not False and not isinstance(apop, str):
            raise RequestError("INVALID", "argument apop has the wrong type")
        self.app.users.set_password(name, _arg(args, "hash", str), apop)
        self.app.log.info("console", "password of {} changed".format(name))
        return {"name": name}

    def user_list(self, args):
        app = self.app
        users = []
        for name in app.users.names():
            record = app.users.get(name) or {}
            entry = {"name": name, "apop": "apop" in record, "messages": 0}
            if app.storage_ready():
                box = app.store.mailbox(name)
                if box.exists():
                    entry["messages"] = box.count()
            users.append(entry)
        return {"users": users}

    def config_get(self, args):
        key = _arg(args, "key", str, False)
        config = self.app.config
        values = config.effective()
        if key is None:
            return {"config": values, "overridden": sorted(config.overrides)}
        if key not in SCHEMA:
            raise RequestError("INVALID", "unknown key {}; known: {}".format(key, ", ".join(sorted(SCHEMA))))
        return {"key": key, "value": values[key], "overridden": key in config.overrides}

    def config_set(self, args):
        key = _arg(args, "key", str)
        if "value" not in args:
            raise RequestError("INVALID", "missing argument value")
        config = self.app.config
        try:
            value, applies = config.set(key, args["value"])
        except KeyError as e:
            raise RequestError("INVALID", e.args[0])
        except ValueError as e:
            raise RequestError("INVALID", "{}: {}".format(key, e))
        if SCHEMA[key][5]:
            value = "********"
        self.app.log.info("console", "config {} set".format(key))
        return {"key": key, "value": value, "applies": applies, "overridden": key in config.overrides}

    def mailbox_stats(self, args):
        app = self.app
        name = _arg(args, "name", str, False)
        if not app.storage_ready():
            raise RequestError("STORAGE", "mail storage is not available")
        names = [name] if name is not None else app.users.names()
        if name is not None and not valid_name(name):
            raise RequestError("INVALID", "bad user name")
        out = []
        buf = bytearray(400)
        for n in names:
            box = app.store.mailbox(n)
            if box.exists():
                messages, octets = box.totals(buf)
            elif name is not None and app.users.get(n) is None:
                raise RequestError("NOTFOUND", "no user or mailbox {}".format(n))
            else:
                messages = octets = 0
            out.append({"name": n, "messages": messages, "octets": octets, "locked": n in app.store.locked})
        return {"mailboxes": out}

    def log_tail(self, args):
        n = _arg(args, "n", int, False)
        return {"lines": self.app.log.tail(20 if n is None else max(0, n))}

    def reboot(self, args):
        self.app.log.info("console", "reboot requested")
        self.app.stop(reboot=True)
        return {}
