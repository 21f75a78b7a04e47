# The console service: provisioning requests over the serial console while the servers run.
#
# A request is one line "PP> <id> <command> [<json object>]"; its reply is one line
# "PP< <id> ok <json>" or "PP< <id> err <CODE> <json string>". Every other line on the console
# (log lines, tracebacks, a person typing) is not a frame; hosts skip such lines. JSON escapes
# control characters, so no frame ever holds a line end or Ctrl-C. See docs/console-protocol.md.
import json
import sys

from micropython import const

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


class Console:
    def __init__(self, app, stream, out, buf):
        self.app = app
        self.stream = stream  # an asyncio stream over the console input
        self.out = out  # the console output, a text stream
        self.buf = buf  # MAX_REQUEST octets for the request being read

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

    def _run(self, command, args):
        from .requests import HANDLERS  # imported at boot (app.py): this is a dictionary lookup

        handler = HANDLERS.get(command)
        if handler is None:
            raise RequestError("UNKNOWN", "unknown command; known: " + " ".join(sorted(HANDLERS)))
        return handler(self.app, args)

    def _error(self, rid, code, message):
        self.out.write("PP< {} err {} {}\n".format(rid, code, json.dumps(message)))
