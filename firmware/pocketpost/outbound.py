# The board's outbound connections: the relay's to its smarthost (smtpout.py) and the
# collector's to the providers' POP3 servers (collect.py). Both verify the server's certificate
# with the one client context made from the CA certificates installed over the console
# (relay.ca.*, kept in app.relay_context), take a TLS place as a server session does, and run
# one at a time (app.outbound_turn). Loaded with either client and unloaded with it.
import asyncio
import gc
import time

from micropython import const

# How long to wait for a TLS place taken by server sessions: 50 x 100 ms, then a failure.
_PLACE_WAITS = const(50)


class Failed(Exception):
    """The outbound connection's try ends here, for the reason given (a text)."""


class ClientTls:
    # What Connection.start_tls wants: wrap(sock) giving the client side of a TLS session
    # that checks the certificate against the installed CAs and `host` (CERT_REQUIRED).
    def __init__(self, context, host):
        self.context = context
        self.host = host

    def wrap(self, sock):
        return self.context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)


def context(app):
    """The client context made at boot or at the CA's installation (app.relay_context), else a
    new one (kept for later); or, as a text, the reason there is none."""
    if time.gmtime()[0] < 2024:
        return "the clock is not set (waiting for NTP): certificates cannot be checked"
    made = getattr(app, "relay_context", None)
    if made is None:
        gc.collect()
        from . import unload
        from .outbox import client_context

        try:
            made = client_context(app.flash)
        finally:
            client_context = None
            unload("pocketpost.outbox")
        if made is None:
            return "no CA certificate installed to verify the server (pocketpost relay ca install)"
        app.relay_context = made  # kept for the next connections
    return made


async def tls_place(app):
    """Outbound TLS takes a place like a server session (tls_max_sessions, at least one);
    False when the board serves no TLS (the outbound session is then the only one)."""
    tls = app.tls
    if tls is None or tls.context is None:
        return False
    for _ in range(_PLACE_WAITS):
        if tls.acquire(max(1, app.config["tls_max_sessions"])):
            return True
        await asyncio.sleep_ms(100)
    raise Failed("every TLS place is taken by client sessions")


async def end(app, conn, place):
    """Ends an outbound connection however its session went: the socket closed (an error then
    is ignored: it may be broken already) and the TLS place given back."""
    if conn is not None:
        try:
            conn.stream.close()
            await conn.close()
        except Exception:
            pass
    if place:
        app.tls.release()


async def handshake(conn, timeout_ms):
    """Implicit TLS: the server speaks first, and waiting for the socket to be readable does
    not start a client's handshake on this ssl module; trying to read every 10 ms does (the
    greeting then lands in the input buffer)."""
    start = time.ticks_ms()
    while not conn.take():
        if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
            raise Failed("TLS handshake timed out")
        await asyncio.sleep_ms(10)
