# The relay's SMTP client (RFC 5321) to the smarthost: STARTTLS (RFC 3207) or implicit TLS
# (RFC 8314) with the context relay.py made, AUTH PLAIN or LOGIN (RFC 4954), SIZE (RFC 1870), the
# message streamed from the card. Loaded by relay.py when a message is due, after the TLS
# context (one block of ~3 KB) is made, and unloaded at the end of the pass. The TLS client
# pieces (the certificate check, the TLS place, the handshake) are outbound.py's, shared with
# the collector (collect.py).
import asyncio
import binascii

from micropython import const

from . import outbox, unload
from .netio import Connection, Slot
from .outbound import ClientTls as _ClientTls
from .outbound import Failed as Deferred
from .outbound import end, handshake, tls_place
from .transparency import send_file

unload(outbox.__name__)  # kept by this module only: unloaded with it
unload("pocketpost.outbound")  # (shared with the collector, and as well kept only here)

# Recipients in one transaction (RFC 5321 §4.5.3.1.8 asks servers to take 100).
_BATCH = const(100)
# Longest reply line read from the smarthost; longer ones are cut.
_MAX_REPLY = const(512)


class _Client:
    def __init__(self, app, conn, timeout_ms):
        self.app = app
        self.conn = conn
        self.timeout_ms = timeout_ms
        self.text = ""  # the last reply's first line
        self.ext = None  # EHLO keywords: {"STARTTLS": "", "AUTH": "PLAIN LOGIN", "SIZE": "..."}

    async def reply(self):
        return await asyncio.wait_for_ms(self._reply(), self.timeout_ms)

    async def _reply(self):
        # The reply's code; its first line kept in self.text, EHLO's keywords in self.ext.
        conn = self.conn
        first = True
        for _ in range(100):
            line = await conn.readline(_MAX_REPLY)
            if line is None:
                continue  # an overlong line: cut
            if len(line) < 3:
                raise Deferred("malformed reply from the smarthost")
            try:
                text = str(line, "utf-8")
            except UnicodeError:
                text = "400 (a reply that is not UTF-8: deferred)"
            if first:
                self.text = text[:200]
                first = False
            elif self.ext is not None and len(text) > 4:
                key, _, value = text[4:].partition(" ")
                self.ext[key.upper()] = value
            if text[3:4] != "-":
                if not text[:3].isdigit():
                    raise Deferred("malformed reply from the smarthost")
                return int(text[:3])
        raise Deferred("reply of more than 100 lines from the smarthost")

    async def command(self, line):
        conn = self.conn
        conn.put(line.encode() if isinstance(line, str) else line)
        conn.put(b"\r\n")
        await conn.flush()
        return await self.reply()

    async def ehlo(self):
        self.ext = {}
        try:
            code = await self.command("EHLO " + self.app.config["hostname"])
        finally:
            ext = self.ext
            self.ext = None
        if code != 250:
            raise Deferred("EHLO: " + self.text)
        return ext


async def send(app, env, context):
    """One try at sending `env`'s pending recipients. Sets their states and env.error."""
    config = app.config
    env.error = ""
    if not config["relay_host"]:
        env.error = "no smarthost configured (relay_host)"
        return
    if isinstance(context, str):
        env.error = context  # no context: the reason
        return
    # A client connection's buffers when one is free (the relay counts as a client), else its own.
    borrowed = bool(app.free_slots)
    slot = app.free_slots.pop() if borrowed else Slot()
    place = False
    conn = None
    try:
        tls = None
        if context is not None:
            tls = _ClientTls(context, config["relay_host"])
            place = await tls_place(app)
        streams = await asyncio.wait_for_ms(asyncio.open_connection(config["relay_host"], config["relay_port"]), config["relay_timeout"] * 1000)
        conn = Connection(streams[0], slot)
        streams = None
        client = _Client(app, conn, config["relay_timeout"] * 1000)
        await _session(app, env, client, tls)
    except Deferred as e:
        env.error = e.args[0]
        if conn is not None and not conn.handshaking:
            await _quit(conn)  # RFC 5321 §4.1.1.10: a session ends with QUIT, whatever went wrong
    except asyncio.TimeoutError:
        env.error = "timed out waiting for the smarthost ({}: {})".format(config["relay_host"], config["relay_port"])
    except MemoryError:
        raise
    except Exception as e:  # the connection failed, or TLS did (a certificate not verified)
        env.error = "{}:{}: {}: {}".format(config["relay_host"], config["relay_port"], type(e).__name__, str(e).strip())
    finally:
        await end(app, conn, place)
        if borrowed:
            app.free_slots.append(slot)
    env.error = env.error.replace("\n", " ")


async def _session(app, env, client, tls):
    config = app.config
    conn = client.conn
    host = config["relay_host"]
    security = config["relay_security"]
    if security == "tls":
        conn.start_tls(tls)
        await handshake(conn, client.timeout_ms)
    if await client.reply() != 220:
        raise Deferred("greeting: " + client.text)
    ext = await client.ehlo()
    if security == "starttls":
        if "STARTTLS" not in ext:
            # Nothing more is said in plaintext (but QUIT): no credentials, no mail.
            raise Deferred("{} does not offer STARTTLS".format(host))
        if await client.command("STARTTLS") != 220:
            raise Deferred("STARTTLS: " + client.text)
        conn.start_tls(tls)  # what the server sent before the handshake is dropped
        ext = await client.ehlo()  # RFC 3207 §4.2: learned anew inside TLS
    user = config["relay_user"]
    if user:
        await _auth(client, ext, user, config["relay_password"])
    # The pending recipients as their places in env.rcpts, one octet each (a list of their
    # addresses would take ~6 KB of a 64-bit heap for 100).
    pending = env.pending_places()
    size = env.size - env.skip
    limit = ext.get("SIZE", "")
    if limit.isdigit() and 0 < int(limit) < size:
        for i in pending:
            env.set_state_at(i, outbox.BOUNCED, "552 5.3.4 message of {} octets is over the smarthost's limit of {}".format(size, limit))
        raise Deferred("message too big for the smarthost")
    sender = env.sender
    if sender and config["relay_sender"]:
        sender = config["relay_sender"]  # masquerading: the header From stays as written
    # At most _BATCH recipients a transaction; those a smarthost with a lower limit answered
    # 452 (RFC 5321 §4.5.3.1.10) go in the next transaction of the same session.
    first = 0
    while first < len(pending):
        first += await _transaction(app, env, client, sender, pending[first : first + _BATCH], size, "SIZE" in ext)
    conn.put(b"QUIT\r\n")
    await conn.flush()


async def _quit(conn):
    # Best effort: the try is over whatever the smarthost does with it.
    try:
        conn.put(b"QUIT\r\n")
        await asyncio.wait_for_ms(conn.flush(), 2000)
    except Exception:
        pass


async def _auth(client, ext, user, password):
    mechanisms = ext.get("AUTH", "").upper().split()
    if "PLAIN" in mechanisms:
        token = binascii.b2a_base64(b"\0" + user.encode() + b"\0" + password.encode()).rstrip()
        code = await client.command(b"AUTH PLAIN " + token)
    elif "LOGIN" in mechanisms:
        code = await client.command("AUTH LOGIN")
        if code == 334:
            code = await client.command(binascii.b2a_base64(user.encode()).rstrip())
        if code == 334:
            code = await client.command(binascii.b2a_base64(password.encode()).rstrip())
    else:
        raise Deferred("the smarthost offers neither AUTH PLAIN nor AUTH LOGIN")
    if code != 235:
        client.app.log.warn("relay", "AUTH as {} refused: {}".format(user, client.text))
        raise Deferred("authentication failed: " + client.text)


async def _transaction(app, env, client, sender, batch, size, with_size):
    # Returns how many of `batch` it dealt with (all, unless the smarthost's recipient limit
    # left some for another transaction).
    log = app.log
    conn = client.conn
    mail = "MAIL FROM:<{}>".format(sender) + (" SIZE={}".format(size) if with_size else "")
    code = await client.command(mail)
    log.info("relay", "{} MAIL FROM:<{}>: {}".format(env.id, sender, client.text))
    if code != 250:
        if code >= 500:
            for i in batch:
                env.set_state_at(i, outbox.BOUNCED, client.text)
        raise Deferred("MAIL: " + client.text)
    accepted = bytearray()  # places in env.rcpts, as batch
    done = 0
    for i in batch:
        address = env.rcpts.address(i)
        code = await client.command("RCPT TO:<{}>".format(address))
        log.info("relay", "{} RCPT TO:<{}>: {}".format(env.id, address, client.text))
        if code == 452 and accepted and " 4.5.3 " in client.text[3:10]:
            break  # the smarthost's limit: this one and the rest in the next transaction
        done += 1
        if 200 <= code < 300:
            accepted.append(i)
        elif code >= 500:
            env.set_state_at(i, outbox.BOUNCED, client.text)
        else:
            env.error = "RCPT TO:<{}>: {}".format(address, client.text)
    if not accepted:
        await client.command("RSET")
        return done
    code = await client.command("DATA")
    if code != 354:
        _outcome(env, accepted, code, "DATA: " + client.text)
        return done
    with open(outbox.paths(app.store, env.id)[0], "rb") as f:
        f.seek(env.skip)
        await send_file(conn, f)
    await conn.flush()
    code = await client.reply()
    log.info("relay", "{} sent to {} recipients: {}".format(env.id, len(accepted), client.text))
    _outcome(env, accepted, code, client.text)
    return done


def _outcome(env, places, code, text):
    if 200 <= code < 300:
        for i in places:
            env.set_state_at(i, outbox.DELIVERED)
    elif code >= 500:
        for i in places:
            env.set_state_at(i, outbox.BOUNCED, text)
    else:
        env.error = text
