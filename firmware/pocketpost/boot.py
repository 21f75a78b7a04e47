# Start-up. The order matters on a small heap: the large blocks that live as long as the
# firmware (file systems, client buffers, the log ring) are allocated first, while the heap is
# still in one piece; the protocol code, imported after them, would otherwise leave it in
# fragments too small for a 1 KB buffer.
import gc
import os

from . import VERSION
from .config import Config
from .console import MAX_REQUEST
from .heap import restore as restore_reserve
from .log import Log
from .netio import Slot


def start(board):
    """Makes the appliance for `board`, not yet running (app.run_until_stopped runs it). This
    module is unloaded before it returns: its code is needed once a boot, and the heap it takes
    is the servers'."""
    from . import unload

    _intern_names()
    log = Log(board.console_out)
    log.info("boot", "pocketpost {} on board {}".format(VERSION, board.name))
    flash = board.mount_flash(log)
    sd = board.mount_sd(log)
    config = Config(flash, board.overrides, board.defaults)
    slots = [Slot() for _ in range(config["max_clients"])]
    console_buffer = bytearray(MAX_REQUEST)
    tls = _load_tls(flash, log)
    relay_context = _relay_context(flash, config, log)
    gc.collect()
    restore_reserve()
    from .app import App

    app = App(board, log, config, flash, sd, slots, console_buffer, tls)
    app.relay_context = relay_context
    unload(__name__)
    return app


def _intern_names():
    """Imports each module loaded only when used (the occasional ones, and the sessions' code:
    server.session_begins) once and unloads it, so the names its code uses are interned now,
    while the heap is in one piece. MicroPython keeps names in pools that double as they fill:
    the first console request after boot would otherwise need the next pool, one block of ~8 KB
    on a 64-bit port (qstr_info's n_total_bytes went from 13,274 to 21,710 for 111 new names),
    from a heap already in fragments, and fail for as long as it lasts."""
    from . import unload
    from .heap import OCCASIONAL
    from .server import SESSION_MODULES

    for name in OCCASIONAL + SESSION_MODULES:
        try:
            __import__(name)
        except ImportError:  # a port without ssl has no use for the certificate parser
            pass
        unload(name)
        gc.collect()
    unload("pocketpost.requests")  # (the package, loaded with its first module)
    gc.collect()


def _relay_context(flash, config, log):
    """The relay's TLS client context (relay.py) when a smarthost with TLS and its CA
    certificates are set up, or collector accounts (collect.py: their POP3S), made while the heap
    has a block for it; else None."""
    if not config["relay_host"] or config["relay_security"] == "plain":
        try:
            for _ in os.ilistdir(flash + "/collect"):
                break
            else:
                return None  # none left
        except OSError:
            return None
    from . import outbox, unload

    try:
        return outbox.client_context(flash)
    except MemoryError:
        return None  # the relay makes it when it can
    except (OSError, ValueError) as e:
        log.exception("relay", "the CA certificates cannot be used", e)
        return None
    finally:
        unload(outbox.__name__)


def _load_tls(flash, log):
    """The TLS state with its context, when a certificate is installed; else None."""
    try:
        os.stat(flash + "/tls/cert.der")
    except OSError:
        return None  # no certificate: the TLS code is not even imported
    from .tls import Tls

    tls = Tls(flash, log)
    try:
        tls.load()
    except (OSError, ValueError) as e:
        log.exception("tls", "the installed certificate cannot be used", e)
    return tls
