# Mail for other domains coming in: who may relay (RCPT), and the received message put in the
# relay queue (outbox.py) before the client hears 250. Loaded by the SMTP session for the
# command that needs it and unloaded after.
import os

from micropython import const

from . import outbox, unload
from .mailbox import path_exists

unload(outbox.__name__)  # kept by this module only: unloaded with it

_ENOSPC = const(28)


def may_relay(app, peer, authenticated):
    """Whether a client may send mail to other domains: relaying is configured, and the client
    has authenticated or its address is in relay_networks."""
    config = app.config
    if not config["relay_host"]:
        return False
    if authenticated:
        return True
    address = _ip(peer)
    if address is None:
        return False
    for network in config["relay_networks"]:
        base, _, bits = network.partition("/")
        bits = int(bits)
        mask = ((1 << bits) - 1) << (32 - bits) if bits else 0
        if _ip(base) is not None and address & mask == _ip(base) & mask:
            return True
    return False


def _ip(text):
    if text.startswith("::ffff:"):
        text = text[7:]
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for p in parts:
        if not p.isdigit():
            return None
        value = value << 8 | int(p)
    return value


def accept(session, address):
    """RCPT of a recipient of another domain: the reply, the recipient added to the session's
    `remote` list when accepted."""
    app = session.app
    if not may_relay(app, session.peer, session.auth_user is not None):
        session.log("relay denied: <{}>".format(address))
        return "550 5.7.1 <{}>: Relay access denied".format(address)
    if len(session.remote) >= outbox.MAX_RECIPIENTS:
        return "452 4.5.3 Error: too many recipients"
    if not session.remote:
        messages, octets = outbox.usage(app.store)
        config = app.config
        if messages >= config["relay_queue_messages"] or octets >= config["relay_queue_octets"]:
            app.log.warn("relay", "queue full: {} messages, {} octets".format(messages, octets))
            return "452 4.3.1 Insufficient system storage: the relay queue is full"
    if address not in session.remote:
        session.remote.append(address)
    return "250 2.1.5 Ok"


async def enqueue(app, incoming, qid, sender, rcpts, skip, keep):
    """Queues the received message `incoming` for `rcpts`, durably, before the client hears
    250. With `keep` the received file stays for local delivery (a copy is queued; its file is
    left open for Incoming.commit). Returns the ID it was queued as; raises OSError or
    MemoryError with nothing queued."""
    from .store import _copy_file

    store = app.store
    if incoming.error is None:
        try:
            incoming.file.close()
        except OSError as e:
            incoming.error = e
        incoming.file = None
    if incoming.error is not None:
        raise incoming.error
    total, free = store.space()
    messages, octets = outbox.usage(store)
    if free < incoming.size + 65536 or octets + incoming.size > app.config["relay_queue_octets"]:
        if keep:
            incoming.file = open(incoming.path, "ab")
        raise OSError(_ENOSPC)
    while path_exists(outbox.paths(store, qid)[1]):
        qid = outbox.new_id()
    msg = outbox.paths(store, qid)[0]
    env = outbox.Envelope(qid)
    env.created = env.next = outbox.now_ms()
    env.sender = sender
    env.size = incoming.size
    env.skip = skip
    env.rcpts = [outbox.PENDING + "\t" + r for r in rcpts]
    tmp = None
    try:
        if keep:
            # Copied in the temp folder, renamed into the queue: a .MSG is always complete.
            tmp = store.tmp_path()
            await _copy_file(incoming.path, tmp, bytearray(512))
            os.rename(tmp, msg)
            incoming.file = open(incoming.path, "ab")  # Incoming.commit closes it again
        else:
            os.rename(incoming.path, msg)
        outbox.write(store, env, "TMP")
    except BaseException:
        for path in (tmp, outbox.paths(store, qid)[1], msg):
            if path is not None:
                outbox._remove(path)
        raise
    return qid
