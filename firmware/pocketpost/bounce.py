# Bounces (RFC 3464 delivery status notifications) for relayed mail the smarthost refused or
# that stayed undelivered for relay_lifetime: sent to the envelope sender, into a local mailbox
# when the sender is a local user, else through the smarthost with the null sender. Mail with
# the null sender (a bounce itself) is never bounced: its report goes to the postmaster mailbox.
# Loaded by relay.py for one bounce and unloaded after it.
import sys
import time

from micropython import const

from . import outbox, unload
from .dates import rfc5322_date

unload("pocketpost.dates")  # both kept by this module only: unloaded with it
unload(outbox.__name__)

# Octets of the original header copied into the report at most.
_MAX_HEADER = const(16384)


def _status(reply):
    # The enhanced status code of an SMTP reply ("550 5.1.1 ..."), else one for its class.
    parts = reply.split(" ", 2)
    if len(parts) > 1 and parts[1][:1] in "45" and parts[1].count(".") == 2:
        return parts[1]
    if reply.startswith("expired"):
        return "4.4.7"
    return "5.0.0"


class _Writer:
    def __init__(self, incoming):
        self.incoming = incoming

    def text(self, s):
        data = s.encode()
        self.incoming.write(data, 0, len(data))


async def run(app):
    """Makes the bounces of the queued messages whose recipients are all done (relay.py),
    then removes them."""
    store = app.store
    for qid in outbox.each(outbox.ids(store)):
        env = outbox.read(store, qid)
        if env is not None and not env.has_pending():
            await send(app, env)
            outbox.remove(store, qid)


async def send(app, env):
    """Makes the report for `env`'s bounced recipients and delivers or queues it."""
    config = app.config
    hostname = config["hostname"]
    sender = env.sender
    local = None  # the local mailbox the report goes to
    if not sender:
        local = config["postmaster"]
    else:
        name, _, domain = sender.rpartition("@")
        if domain.lower() in config["domains"]:
            name = name.lower()
            local = name if app.users.exists(name) else config["postmaster"]
    incoming = app.store.incoming()
    out = _Writer(incoming)
    boundary = "{}.{}/{}".format(env.id, time.time(), hostname)
    to = sender or "postmaster@" + config["domains"][0]
    head = "Return-Path: <>\r\n"
    try:
        out.text(head)
        out.text("Date: {}\r\nFrom: Mail Delivery System <MAILER-DAEMON@{}>\r\nTo: <{}>\r\n".format(rfc5322_date(int(time.time())), hostname, to))
        out.text("Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <{}.{}@{}>\r\nAuto-Submitted: auto-replied\r\n".format(env.id, outbox.new_id(), hostname))
        out.text('MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{}"\r\n\r\n'.format(boundary))
        out.text("This is a MIME-encapsulated message (a delivery status notification, RFC 3464).\r\n\r\n")
        out.text("--{}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".format(boundary))
        out.text("This is pocketpost at {}.\r\n\r\nYour message {}could not be delivered to the recipients below.\r\n\r\n".format(
            hostname, "" if sender else "(sent with the null sender, so this report is for the postmaster) "))
        for r in env.rcpts:
            if r[0] == outbox.BOUNCED:
                parts = r.split("\t")
                out.text("<{}>: {}\r\n".format(parts[1], parts[2] if len(parts) > 2 else ""))
        out.text("\r\n--{}\r\nContent-Type: message/delivery-status\r\n\r\n".format(boundary))
        out.text("Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n".format(hostname, rfc5322_date(env.created // 1000)))
        for r in env.rcpts:
            if r[0] == outbox.BOUNCED:
                parts = r.split("\t")
                reply = parts[2] if len(parts) > 2 else "5.0.0 failed"
                out.text("\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n".format(parts[1], _status(reply)))
                if reply[:3].isdigit():
                    out.text("Remote-MTA: dns; {}\r\nDiagnostic-Code: smtp; {}\r\n".format(config["relay_host"], reply))
                else:
                    out.text("Diagnostic-Code: X-pocketpost; {}\r\n".format(reply))
        out.text("\r\n--{}\r\nContent-Type: text/rfc822-headers\r\n\r\n".format(boundary))
        _copy_header(app, env, incoming)
        out.text("\r\n--{}--\r\n".format(boundary))
    except OSError as e:
        incoming.failed(e)
    if local is not None:
        try:
            await incoming.commit([local], bytearray(512))
        except OSError as e:
            app.log.exception("relay", "bounce of {} for {} not delivered".format(env.id, local), e)
            return
        app.log.info("relay", "{} bounce delivered to mailbox {}".format(env.id, local))
        return
    sys.modules[outbox.__name__] = outbox  # lent to enqueue.py: not loaded a second time
    from . import enqueue

    try:
        qid = await enqueue.enqueue(app, incoming, outbox.new_id(), "", [sender], len(head), False)
    except OSError as e:
        incoming.discard()
        app.log.exception("relay", "bounce of {} for <{}> not queued".format(env.id, sender), e)
        return
    finally:
        unload(enqueue.__name__)
        unload(outbox.__name__)
    app.log.info("relay", "{} bounce to <{}> queued as {}".format(env.id, sender, qid))
    app.relay_now = True


def _copy_header(app, env, incoming):
    # The original's header fields (up to the blank line), streamed in 512-octet chunks.
    buf = bytearray(512)
    mv = memoryview(buf)
    copied = 0
    tail = b""
    with open(outbox.paths(app.store, env.id)[0], "rb") as f:
        f.seek(env.skip)
        while copied < _MAX_HEADER:
            n = f.readinto(buf)
            if not n:
                break
            seen = tail + bytes(mv[: min(n, 3)])  # a blank line across two chunks
            k = seen.find(b"\r\n\r\n")
            end = k - len(tail) if k >= 0 else buf.find(b"\r\n\r\n", 0, n)
            if end >= 0:
                incoming.write(buf, 0, max(0, end + 2))
                return
            incoming.write(buf, 0, n)
            copied += n
            tail = bytes(mv[max(0, n - 3) : n])
