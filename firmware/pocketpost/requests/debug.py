# The emulated board's test hook debug.hold (docs/console-protocol.md): heap held so that a
# shortage comes at a chosen point. Loaded only for that request, on a board whose
# debug_requests is set.
import gc

from . import RequestError


def hold(console, rid, args):
    # Test hook: {"leave": N} holds heap until N octets are free; with "next": "console",
    # "pop3" or "smtp" (true: the console) only while the next request or the next command
    # of a session of that protocol runs, "tls" as the next implicit-TLS client's TLS socket
    # is made, "handshake" from then through its greeting, "queue" as the next relayed
    # message is queued at the end of its DATA, "auth" once an AUTH exchange has its
    # credentials (after any prompts) until its reply, "accept" as the next client's
    # connection is taken (before its session begins): until the heap is first
    # relieved, or with "lasting": true until that command or request ends, its redo
    # included; {} lets go.
    app = console.app
    leave = args.get("leave")
    target = args.get("next")
    app.held = app.held_next = app.hold_next = None
    if leave is not None and not isinstance(leave, int):
        raise RequestError("INVALID", "argument leave has the wrong type")
    if target is True:
        target = "console"
    if target not in (None, "console", "pop3", "smtp", "tls", "handshake", "queue", "auth", "accept"):
        raise RequestError("INVALID", "next must be console, pop3, smtp, tls, handshake, queue, auth or accept")
    if target is not None and leave is not None:
        app.hold_next = (target, leave, bool(args.get("lasting")))
    elif leave is not None:
        # Held by the console once this code is unloaded (console.py), which answers then.
        console.hold = leave
        console.hold_id = rid
        return None
    gc.collect()
    return {"heap_free": gc.mem_free()}
