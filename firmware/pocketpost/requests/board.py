# Console requests about the board itself: hello, info, log.tail, reboot.
import gc
import micropython
import os
import sys

from .. import VERSION
from . import PROTOCOL, Streamed, arg


def hello(app, args):
    return {"protocol": PROTOCOL, "firmware": VERSION, "board": app.board.name}


def info(app, args):
    from ..heap import largest_block, reserved

    gc.collect()
    info = {
        "firmware": VERSION,
        "board": app.board.name,
        "uptime_s": app.log.uptime_ms() // 1000,
        "heap_free": gc.mem_free(),
        "heap_used": gc.mem_alloc(),
        "heap_max_block": largest_block(),
        "heap_reserve": reserved(),  # held for a shortage, apart from heap_free (heap.py)
        "hostname": app.config["hostname"],
        "domains": app.config["domains"],
        "bind": app.address,
        "ports": {"pop3": app.config["pop3_port"], "smtp": app.config["smtp_port"]},
        "listening": sorted(listener.port for listener in app.listeners),
        "tls": {
            "certificate": app.tls_ready(),
            "required_for_auth": app.tls_required_for_auth(),
            "sessions": app.tls.sessions if app.tls else 0,
            # A certificate installed when the heap had no room to load it: it serves after
            # the next boot, the one before (if any) until then.
            "pending_reboot": app.tls.pending if app.tls else False,
        },
        "clients": len(app.sessions),
        # The protocols whose sessions' code is loaded now (while they have clients, and 3 s
        # more: server.session_begins).
        "sessions_code": [name for name in ("pop3", "smtp") if "pocketpost." + name in sys.modules],
        "slots_free": len(app.free_slots),
        "users": sum(1 for _ in app.users.names()),
    }
    info["storage"] = app.storage_info()
    if app.storage_ready():
        if _queue_empty(app.store):  # the usual case: nothing of the relay is loaded for it
            info["queue"] = {"messages": 0, "octets": 0, "oldest_s": 0, "next_s": None, "last_error": ""}
        else:
            from .queue import summary

            info["queue"] = summary(app.store)
    if _has_accounts(app):  # the collector's accounts, when there are any
        from .collect import summary as collected

        info["collect"] = collected(app)
    # Bytes allocated since boot, where the port counts them (MICROPY_MEM_STATS): allocation per
    # message predicts GC pauses on a board. (Its mem_peak is no high-water mark of the heap:
    # memory the collector reclaims is never subtracted.)
    if hasattr(micropython, "mem_total"):
        info["heap_allocated_total"] = micropython.mem_total()
    info.update(app.board.info())
    return info


def _queue_empty(store):
    try:
        for _ in os.ilistdir(store.root + "/queue"):
            return False
    except OSError:
        pass  # no queue folder: nothing queued
    return True


def _has_accounts(app):
    try:
        for _ in os.ilistdir(app.flash + "/collect"):
            return True
    except OSError:
        pass
    return False


def log_tail(app, args):
    n = arg(args, "n", int, False)
    return Streamed("lines", app.log.tail(20 if n is None else max(0, n)))


def reboot(app, args):
    app.log.info("console", "reboot requested")
    app.stop(reboot=True)
    return {}
