# The AUTH command of POP3 (RFC 5034) and of SMTP (RFC 4954): a SASL exchange (sasl.py) wrapped
# in each protocol's replies. Loaded for an exchange and unloaded after it (session.Session's
# cmd_auth), so neither it nor the SASL code stays in the heap between logins.
import asyncio

from micropython import const

from . import sasl
from .heap import with_relief

# A SASL response line (RFC 5034 §4 lets it exceed POP3's command limit; SMTP takes its own
# command limit, which RFC 4954 asks to be generous).
_MAX_POP3_LINE = const(512)
_MAX_SMTP_LINE = const(768)


async def _refuse(*args):
    return False


def _short_after_prompts(session, mechanism, reply):
    """A shortage met once the exchange's prompts had left (the command cannot be run again, as
    its client has answered them): `reply`, a temporary failure, and the session goes on."""
    app = session.app
    app.relieve_memory()
    session.conn.put(reply)
    try:
        session.log("AUTH {}: not enough memory".format(mechanism))
    except MemoryError:
        app.log.warn(session.NAME, "AUTH: not enough memory")  # (made without the heap)


async def pop3(session, arg):
    # (Refused before TLS by Pop3Session.refuse_auth, before this code is loaded.)
    conn = session.conn
    if not arg:
        conn.put(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")  # what Outlook sends first
        return
    command = sasl.parse_command(arg)
    if command is None:
        conn.put(b"-ERR Unsupported authentication mechanism.\r\n")
        return
    mechanism, initial = command
    prompted = False

    async def challenge(prompt):
        nonlocal prompted
        prompted = True
        conn.put(b"+ " + prompt.encode() + b"\r\n")
        line = await conn.readline(_MAX_POP3_LINE)
        return None if line is None else str(line, "ascii")

    try:
        name, password = await sasl.credentials(mechanism, initial, challenge)
        session.app.hold_point("auth")  # the emulated board's test hook: a shortage from here on
        if name is None:  # asked to act as another user
            await session.login("?", "AUTH " + mechanism, _refuse)
        else:
            await session.login(name, "AUTH " + mechanism, session.app.users.verify, name, password)
    except sasl.Cancelled:
        conn.put(b"-ERR Authentication cancelled.\r\n")
    except sasl.Malformed:
        conn.put(b"-ERR Invalid base64 data or SASL message.\r\n")
    except MemoryError:
        if not prompted:
            raise  # nothing has left: the command's temporary error (Session.command)
        _short_after_prompts(session, mechanism, session.NOMEM_REPLY)


async def smtp(session, arg):
    # (Out of sequence, or before TLS: refused by SmtpSession.refuse_auth, before this code is
    # loaded.) From here on nothing counts as a bad command: choosing a mechanism by trial,
    # cancelling and wrong credentials are a login's business (delay and lock-out).
    app = session.app
    conn = session.conn
    command = sasl.parse_command(arg)
    if command is None:
        conn.put(b"504 5.5.4 Unrecognized authentication type\r\n")
        return
    mechanism, initial = command
    if app.throttle.locked_out(session.peer):
        session.log("AUTH refused (too many failures)")
        conn.put(b"454 4.7.0 Temporary authentication failure\r\n")
        return

    prompted = False

    async def challenge(prompt):
        nonlocal prompted
        prompted = True
        session.reply("334 " + prompt)
        line = await conn.readline(_MAX_SMTP_LINE)
        return None if line is None else str(line, "ascii")

    try:
        name, password = await sasl.credentials(mechanism, initial, challenge)
        app.hold_point("auth")  # the emulated board's test hook: a shortage from here on
        # (The check changes nothing: where it runs short, it is tried again a moment later.)
        right = name is not None and await with_relief(app.relieve_memory, app.users.verify, name, password)
    except sasl.Cancelled:
        conn.put(b"501 5.7.0 Authentication aborted\r\n")
        return
    except sasl.Malformed:
        conn.put(b"501 5.5.2 Cannot decode response\r\n")
        return
    except MemoryError:
        if not prompted:
            raise  # nothing has left: the command's temporary error (Session.command)
        # RFC 4954 §6: 454 4.7.0, a temporary server failure.
        _short_after_prompts(session, mechanism, b"454 4.7.0 Temporary authentication failure (not enough memory)\r\n")
        return
    if not right:
        delay = app.throttle.failed(session.peer)
        session.log("AUTH {} failed: {}".format(mechanism, name))
        await conn.flush()
        await asyncio.sleep_ms(delay)
        conn.put(b"535 5.7.8 Authentication credentials invalid\r\n")
        return
    app.throttle.succeeded(session.peer)
    session.auth_user = name
    session.log("AUTH {} as {}".format(mechanism, name))
    conn.put(b"235 2.7.0 Authentication successful\r\n")
