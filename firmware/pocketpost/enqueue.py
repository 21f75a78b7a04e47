# Mail for other domains coming in: who may relay (RCPT), the received message put in the relay
# queue (outbox.py) before the client hears 250, and the queue's repair at start-up (what a power
# cut left half done). Loaded for the command (or the first relay pass) that needs it and
# unloaded after.
import os

from micropython import const

from . import unload
from .heap import PATIENT, with_relief
from .mailbox import path_exists, sync

_ENOSPC = const(28)
# The queue's repair at start-up (recover): names acted on after each scan of the folder, and
# scans at most (each one that finds something fixes at least one entry for good).
_REPAIRS_PER_SCAN = const(8)
_MAX_SCANS = const(64)
# Recipients of other domains in one message (RFC 5321 §4.5.3.1.8: a client splits a longer
# list into several transactions when it hears 452 4.5.3). As outbox.MAX_RECIPIENTS, which RCPT
# does not load.
_MAX_RECIPIENTS = const(100)


def _outbox():
    # The queue's format (outbox.py), for the functions that write or read envelopes; RCPT's
    # checks do without it.
    try:
        from . import outbox
    except MemoryError:
        # A module cut short by a shortage: older MicroPython releases keep it in sys.modules
        # (the next import would find it half made), 1.29 drops it but leaves it in the table's
        # slot (its heap is not freed); unload() ends both.
        unload("pocketpost.outbox")
        raise
    unload(outbox.__name__)  # kept by the caller only
    return outbox


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


async def rcpt(session, address):
    """RCPT of a recipient of another domain, answered."""
    answer = accept(session, address)
    session.reply(answer)
    if answer[0] == "2":
        session.recipients += 1
        if session.first_recipient is None:
            session.first_recipient = address


async def data(session, incoming, qid, sender, rcpts, skip, size, mailboxes):
    """The end of DATA for a message with recipients of other domains: queued (enqueue), the
    client answered when no local user gets it, the relay woken. Returns the ID it was queued
    as, or None when it could not be (the client has its temporary error, nothing is queued)."""
    app = session.app
    try:
        # Where it runs short, nothing was queued and the received message is as it was: queued
        # again with the heap relieved, a moment later, as a delivery is (the envelope of 100
        # recipients ran short at 160k under stress-ng, and the client had to send it all again).
        queueing = with_relief(app.relieve_memory, enqueue, app, incoming, qid, sender, rcpts, skip, bool(mailboxes), again=PATIENT)
        app.hold_point("queue")  # the emulated board's test hook: a shortage in the queueing
        qid = await queueing
    except MemoryError:
        incoming.discard()
        app.relieve_memory()
        try:
            session.log("queueing {}: not enough memory".format(qid))
        except MemoryError:
            app.log.warn(session.NAME, "queueing: not enough memory")  # (made without the heap)
        session.conn.put(session.NOMEM_REPLY)
        return None
    except OSError as e:
        incoming.discard()
        app.log.exception(session.NAME, "{} queueing {} failed".format(session.peer, qid), e)
        session.conn.put(b"452 4.3.1 Insufficient system storage\r\n" if e.errno == _ENOSPC else b"451 4.3.0 Local error in processing\r\n")
        return None
    if not mailboxes:
        # Queued: from here on a shortage must not make the client send it again. The log line
        # names the first recipient only (100 of them would need a block of ~3 KB).
        more = len(rcpts) - 1
        try:
            session.log("queued {} from <{}> for {}{} ({} octets)".format(
                qid, sender, rcpts[0], " and {} more".format(more) if more else "", size))
        except MemoryError:
            app.relieve_memory()  # the line is lost, not the message
        for _ in range(2):
            try:
                session.reply("250 2.0.0 Ok: queued as {}".format(qid))
                break
            except MemoryError:
                app.relieve_memory()
        app.relay_kick()
    return qid


async def unqueue(session, qid):
    """The local delivery failed after the message was queued: the client sends it again."""
    _outbox().remove(session.app.store, qid)


def accept(session, address):
    """RCPT of a recipient of another domain: the reply, the recipient added to the session's
    `remote` list when accepted."""
    app = session.app
    if not may_relay(app, session.peer, session.auth_user is not None):
        session.log("relay denied: <{}>".format(address))
        return "550 5.7.1 <{}>: Relay access denied".format(address)
    if len(session.remote) >= _MAX_RECIPIENTS:
        return "452 4.5.3 Error: too many recipients"
    if not session.remote:
        messages, octets = usage(app.store)
        config = app.config
        if messages >= config["relay_queue_messages"] or octets >= config["relay_queue_octets"]:
            app.log.warn("relay", "queue full: {} messages, {} octets".format(messages, octets))
            return "452 4.3.1 Insufficient system storage: the relay queue is full"
        # Room for all of them at once, while the heap is least cut up: appended one by one the
        # list doubles, and its growth to 128 entries needs a block of 1 KB (64-bit) among the
        # recipients' strings. MicroPython's `del` of a slice keeps a list's allocation.
        remote = [None] * _MAX_RECIPIENTS
        del remote[:]
        session.remote = remote
    if address not in session.remote:
        session.remote.append(address)
    return "250 2.1.5 Ok"


async def enqueue(app, incoming, qid, sender, rcpts, skip, keep):
    """Queues the received message `incoming` for `rcpts`, durably, before the client hears
    250. With `keep` the received file stays for local delivery (a copy is queued; its file is
    left open for Incoming.commit). Returns the ID it was queued as; raises OSError or
    MemoryError with nothing queued and the received message where it was (so it can be
    queued again)."""
    from .store import _copy_file

    outbox = _outbox()

    store = app.store
    if incoming.error is None and incoming.file is not None:  # (closed by an earlier try)
        try:
            incoming.file.close()
        except OSError as e:
            incoming.error = e
        incoming.file = None
    if incoming.error is not None:
        raise incoming.error
    total, free = store.space()
    messages, octets = usage(store)
    if free < incoming.size + 65536 or octets + incoming.size > app.config["relay_queue_octets"]:
        if keep:
            incoming.file = open(incoming.path, "ab")
        raise OSError(_ENOSPC)
    try:
        os.mkdir(outbox.folder(store))  # the first message queued since the card was made
    except OSError:
        pass
    while path_exists(outbox.paths(store, qid)[1]):
        qid = outbox.new_id()
    msg = outbox.paths(store, qid)[0]
    env = outbox.Envelope(qid)
    env.created = env.next = outbox.now_ms()
    env.sender = sender
    env.size = incoming.size
    env.skip = skip
    env.rcpts = rcpts  # bare addresses: written with their state (no second list of them)
    tmp = None
    moved = False
    try:
        if keep:
            # Copied in the temp folder, renamed into the queue: a .MSG is always complete.
            tmp = store.tmp_path()
            await _copy_file(incoming.path, tmp, bytearray(512))
            os.rename(tmp, msg)
            incoming.file = open(incoming.path, "ab")  # Incoming.commit closes it again
        else:
            os.rename(incoming.path, msg)
            moved = True
        outbox.write(store, env, "TMP", outbox.PENDING + "\t")
    except BaseException:
        for path in (tmp, outbox.paths(store, qid)[1]):
            if path is not None:
                outbox._remove(path)
        if moved:
            try:
                os.rename(msg, incoming.path)  # back where it was received
            except OSError:
                outbox._remove(msg)
        else:
            outbox._remove(msg)
        raise
    return qid


def usage(store):
    """(messages, octets) in the queue."""
    messages = octets = 0
    try:
        for entry in os.ilistdir(store.root + "/queue"):
            if entry[0].endswith(".ENV"):
                messages += 1
            elif entry[0].endswith(".MSG") and len(entry) > 3:
                octets += entry[3]
    except OSError:
        pass
    return messages, octets


def recover(store, log):
    """At start-up: finishes or undoes what a power cut left half done (see outbox.py). Reads
    the folder entry by entry, never as a list (it grows with the queue): each scan notes at most
    _REPAIRS_PER_SCAN names to act on, and acts after it (a folder is not changed while it is read); scans
    go on until one finds nothing to do."""
    outbox = _outbox()
    path = outbox.folder(store)
    try:
        os.mkdir(path)
    except OSError:
        pass
    for _ in range(_MAX_SCANS):
        repairs = []
        for entry in os.ilistdir(path):
            name = entry[0]
            base = path + "/" + name[:-4]
            kind = name[-4:]
            if (kind in (".NEW", ".TMP")
                    or (kind == ".MSG" and not any(path_exists(base + k) for k in (".ENV", ".NEW", ".BAD")))
                    or (kind == ".ENV" and outbox.read(store, name[:-4]) is None)):
                repairs.append(name)
                if len(repairs) >= _REPAIRS_PER_SCAN:
                    break
        if not repairs:
            break
        for name in repairs:
            base = path + "/" + name[:-4]
            kind = name[-4:]
            if kind == ".NEW":
                if path_exists(base + ".ENV"):  # written part-way: the old envelope stands
                    outbox._remove(base + ".NEW")
                else:  # complete (the old one was removed after it was closed)
                    os.rename(base + ".NEW", base + ".ENV")
            elif kind == ".TMP":
                outbox._remove(base + ".TMP")  # never committed: its .MSG goes at the next scan
            elif kind == ".MSG":
                outbox._remove(base + ".MSG")  # never committed
            else:
                log.error("relay", "queue: damaged envelope {} set aside as {}.BAD".format(name, name[:-4]))
                outbox._remove(base + ".BAD")
                os.rename(base + ".ENV", base + ".BAD")
        sync()
