# Start-up. The order matters on a small heap: the large blocks that live as long as the
# firmware (file systems, client buffers, the log ring) are allocated first, while the heap is
# still in one piece; the protocol code, imported after them, would otherwise leave it in
# fragments too small for a 1 KB buffer.
import gc
import os
import sys

from . import VERSION
from .config import Config
from .console import MAX_REQUEST
from .log import Log
from .netio import Slot


def main(board):
    """Runs the appliance on `board` until it stops; then reboots, or returns after Ctrl-C."""
    log = Log(board.console_out)
    log.info("boot", "pocketpost {} on board {}".format(VERSION, board.name))
    flash = board.mount_flash(log)
    sd = board.mount_sd(log)
    config = Config(flash, board.overrides, board.defaults)
    slots = [Slot() for _ in range(config["max_clients"])]
    console_buffer = bytearray(MAX_REQUEST)
    tls = _load_tls(flash, log)
    gc.collect()

    import asyncio

    from .app import App

    app = App(board, log, config, flash, sd, slots, console_buffer, tls)
    try:
        reboot = asyncio.run(app.run())
    except KeyboardInterrupt:
        log.info("boot", "interrupted (Ctrl-C)")
        board.unmount()
        return
    except Exception as e:
        sys.print_exception(e)
        log.exception("boot", "crashed", e)
        board.unmount()
        board.reset("crash")
        return
    board.unmount()
    if reboot:
        board.reset("reboot")


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
