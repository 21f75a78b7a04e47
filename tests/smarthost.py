"""A smarthost for the relay tests: aiosmtpd on loopback with STARTTLS or implicit TLS, AUTH
required, a certificate made for the test, and replies a test chooses per recipient."""

import asyncio
import ssl
import threading
import time
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from pocketpost_host import tls as certificates

USER = "relayuser"
PASSWORD = "relay-secret"


def make_certificate(folder, hostname="localhost"):
    """(cert PEM path, key PEM path, cert PEM bytes) of a new self-signed certificate."""
    cert_pem, key_pem = certificates.generate(hostname, days=30)
    (folder / f"{hostname}.pem").write_bytes(cert_pem)
    (folder / f"{hostname}.key").write_bytes(key_pem)
    return folder / f"{hostname}.pem", folder / f"{hostname}.key", cert_pem


class Handler:
    def __init__(self):
        self.messages = []  # (mail_from, [rcpt], content bytes)
        self.commands = []  # every MAIL and RCPT seen, and AUTH attempts, in order
        self.auth_attempts = 0
        # address: list of replies, used in turn (the last one again once used up)
        self.rcpt_replies = {}
        self.lock = threading.Lock()
        self.data_delay = 0  # seconds DATA's reply waits (after the message is recorded)
        self.times = []  # time.monotonic() of each message's arrival
        self.max_rcpts = 0  # recipients taken per transaction (452 4.5.3 beyond); 0: no limit

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.commands.append(("MAIL", address, session.ssl is not None, session.authenticated))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.commands.append(("RCPT", address))
            if self.max_rcpts and len(envelope.rcpt_tos) >= self.max_rcpts:
                return "452 4.5.3 Error: too many recipients"
            replies = self.rcpt_replies.get(address)
            reply = replies.pop(0) if replies and len(replies) > 1 else (replies[0] if replies else "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.times.append(time.monotonic())
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 Message accepted"


class _Controller(Controller):
    """aiosmtpd's Controller, knowing its sessions (one SMTP instance a connection)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sessions = []

    def factory(self):
        session = super().factory()
        self.sessions.append(session)
        return session


class Smarthost:
    """mode: "starttls" (STARTTLS required before AUTH), "tls" (implicit TLS), "nostarttls"
    (plaintext only, STARTTLS not offered)."""

    def __init__(self, port, cert, key, mode="starttls", password=PASSWORD, size=33554432):
        self.handler = Handler()
        self.port = port
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        handler = self.handler

        def authenticator(server, session, envelope, mechanism, auth_data):
            with handler.lock:
                handler.auth_attempts += 1
                handler.commands.append(("AUTH", mechanism))
            ok = auth_data.login == USER.encode() and auth_data.password == password.encode()
            return AuthResult(success=ok, handled=False)

        kwargs = dict(authenticator=authenticator, auth_required=True, data_size_limit=size)
        if mode == "starttls":
            kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
            ssl_context = None
        elif mode == "tls":
            kwargs.update(auth_require_tls=False)
            ssl_context = context
        else:
            kwargs.update(auth_require_tls=False)
            ssl_context = None
        self.controller = _Controller(handler, hostname="127.0.0.1", port=port, ssl_context=ssl_context, **kwargs)

    def __enter__(self):
        with warnings.catch_warnings():
            # aiosmtpd warns of AUTH without STARTTLS: here it is inside implicit TLS, or the
            # plaintext smarthost that must never see it.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            self.controller.start()
        return self

    def __exit__(self, *exc):
        # A board's relay may still have a connection open as the test ends: aiosmtpd's stop
        # leaves its transport unclosed, and the ResourceWarning of its collection failed
        # whichever later test the collector happened to run in. Closed first, in the loop's
        # thread (its calls run in order, the stop after them).
        controller = self.controller
        for session in controller.sessions:
            transport = getattr(session, "transport", None)  # (none before its connection_made)
            if transport is not None:
                controller.loop.call_soon_threadsafe(transport.close)
        controller.stop()
