# The collector: each user's accounts at outside providers, polled over POP3S (or STLS, or
# plaintext when set so) and delivered into the user's local mailbox (issue 13). Loaded by
# collecting.py for a pass over the accounts and unloaded after it, as relay.py is; it shares
# the outbound connection, the TLS client context and the TLS place with the relay
# (outbound.py), and runs only while the relay does not.
#
# Exactly once as far as a power cut allows. The provider's UIDL (RFC 1939 §7) names each
# message; the UIDLs already fetched are kept per account in a state file on the card,
# <root>/collect/<ID>.UID: the line "pocketpost-collect 1", one line "<first fetch, seconds>
# <UIDL>" each, the line "end". It is never written in place: a new one is written as <ID>.NEW
# and closed, the old one removed, the new one renamed (FAT renames onto a name by removing it
# first, so a complete .NEW without its .UID is the newest: settle). Per message: RETR streamed
# to the card through the store's Incoming (durable and indexed as SMTP's deliveries are) ->
# its UIDL appended to the journal <ID>.JNL and synced -> only then DELE, when deleting is due.
# The journal is folded into the state (one rewrite) when the pass ends, or at the next one
# after a power cut; a journal line cut short counts for nothing. A cut between the first two
# steps fetches that message once more; nothing is lost. UIDLs the provider no longer lists are
# dropped.
#
# Memory: the module's code (~10 KB of a 64-bit heap) for the pass, and one bit per UIDL the
# state holds (in 128-octet blocks: 1.25 KB for 10,000 messages kept on the provider). The
# state is read from the card, never held: a provider lists its messages in the same order from
# one poll to the next, so each one's UIDL is looked for from where the last one was found
# (usually the next line; a new message costs one reading of the state). The provider's listing
# goes to the card (<ID>.LST) and is read back a line at a time. Every string here is interned
# for good when the module is first loaded: messages are kept short.
import asyncio
import gc
import json
import os
import time

from micropython import const

from . import outbound, unload
from .dates import rfc5322_date
from .mailbox import path_exists, sync
from .netio import Connection, Slot
from .outbound import ClientTls, Failed
from .transparency import receive_data

unload("pocketpost.dates")  # kept by this module only: unloaded with it

unload(outbound.__name__)  # kept by this module only: unloaded with it

_FORMAT = b"pocketpost-collect 1\n"
_END = b"end\n"
_MAX_LINE = const(512)  # longest reply line read from the provider
# Longest line of a listing or of the state: "n UIDL", "<seconds> <UIDL>" (a UIDL has at most
# 70 characters, RFC 1939 §7).
_MAX_ENTRY = const(100)
_MAX_LISTING = const(200000)  # lines of a UIDL listing
# The marks of the state's entries (still listed by the provider): one bit each, in blocks.
_MARK_BLOCK = const(128)
_MARK_SHIFT = const(10)  # 1,024 entries a block
_MARK_MASK = const(1023)
_DAY = const(86400)
# Seconds (of the collector's schedule) until an account whose poll met an unset clock, or ran
# short of the board's memory, is polled again.
_SOON = const(60)
_SHORT = const(10)
NO_UIDL = "the provider does not support UIDL (RFC 1939), which the collector needs to fetch each message once: refused"
_NO_LOGIN = " (no login sent)"


def clock(app):
    """The collector's wall clock, in seconds (the emulated board's tests move it: collect.clock)."""
    return int(time.time()) + getattr(app, "clock_offset", 0)


class _Known:
    """The UIDLs of the state file, looked up on the card: `find` reads on from where the last
    UIDL was found, round to it again at most (so a provider's listing in the order of the
    state costs one line a message), and marks what it finds (one bit an entry)."""

    def __init__(self, path):
        self.count = 0
        self.file = None
        try:
            self.file = open(path, "rb")
        except OSError:
            pass
        if self.file is not None:
            for _ in _entries(self.file):
                self.count += 1
            self.file.seek(0)
            self.file.readline(_MAX_ENTRY)
            self.start = self.file.tell()
        self.at = 0  # the entry the file is positioned at
        self.marks = [bytearray(_MARK_BLOCK) for _ in range((self.count + _MARK_MASK) >> _MARK_SHIFT)]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def find(self, uidl):
        """When the UIDL was first fetched (seconds), or None for a message not fetched yet."""
        f = self.file
        for _ in range(self.count):
            if self.at == self.count:
                f.seek(self.start)
                self.at = 0
            line = f.readline(_MAX_ENTRY)
            i = self.at
            self.at += 1
            stamp, _, known = line[:-1].partition(b" ")
            if known == uidl:
                self.marks[i >> _MARK_SHIFT][(i & _MARK_MASK) >> 3] |= 1 << (i & 7)
                return int(stamp)
        return None

    def listed(self):
        # Whether each entry was found, in order.
        for i in range(self.count):
            yield self.marks[i >> _MARK_SHIFT][(i & _MARK_MASK) >> 3] & (1 << (i & 7))


# ---- the state file


def _complete(path):
    try:
        f = open(path, "rb")
    except OSError:
        return False
    with f:
        if f.read(len(_FORMAT)) != _FORMAT:
            return False
        f.seek(-len(_END), 2)
        return f.read(len(_END)) == _END


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def settle(uid, new, journal):
    """Puts the newest complete state in place after a power cut, with what the journal of a
    pass cut short recorded folded in."""
    if _complete(new):
        _remove(uid)
        os.rename(new, uid)
        sync()
    else:
        _remove(new)
    if path_exists(journal):
        _rewrite(uid, new, None, journal)


def _entries(f):
    # (line, stamp, UIDL) of each entry of an open state file.
    f.readline(_MAX_ENTRY)
    while True:
        line = f.readline(_MAX_ENTRY)
        if not line or line == _END or line[-1:] != b"\n":
            return
        stamp, _, uidl = line[:-1].partition(b" ")
        yield line, int(stamp), uidl


def _rewrite(uid, new, listed, journal):
    """The state anew: the old one's entries (only those `listed` yields true for, when given),
    then the complete lines of the journal; written beside it and put in its place (see the
    module comment). The journal goes last: cut before, it is folded in again at the next
    pass, and an entry twice in the state is found once and forgotten at the next rewrite."""
    with open(new, "wb") as out:
        out.write(_FORMAT)
        if _complete(uid):
            with open(uid, "rb") as f:
                for line, _, _ in _entries(f):
                    if listed is None or next(listed):
                        out.write(line)
        try:
            f = open(journal, "rb")
        except OSError:
            f = None
        if f is not None:
            with f:
                while True:
                    line = f.readline(_MAX_ENTRY)
                    if line[-1:] != b"\n":
                        break  # the end, or a line cut short by a power cut: not recorded
                    out.write(line)
        out.write(_END)
    _remove(uid)
    os.rename(new, uid)
    sync()
    _remove(journal)


def _listing(f):
    # (number, UIDL) of each line of the provider's listing on the card.
    while True:
        line = f.readline(_MAX_ENTRY)
        if not line:
            return
        n, _, uidl = line.rstrip(b"\n").partition(b" ")
        if n.isdigit() and uidl:
            yield int(n), uidl


# ---- POP3, the client side


class _Slot:
    # Buffers of its own (the client connections' stay for the LAN's clients): the input a
    # client's size (RETR is read in its chunks), the output small (commands).
    def __init__(self):
        self.inbuf = bytearray(Slot.IN_SIZE)
        self.outbuf = bytearray(256)
        self.inmv = memoryview(self.inbuf)


def _text(line):
    try:
        return str(bytes(line[:200]), "utf-8")
    except UnicodeError:
        return "?"


class _Pop:
    def __init__(self, conn, timeout_ms):
        self.conn = conn
        self.timeout_ms = timeout_ms
        self.text = ""  # the last reply
        self.login_sent = False

    async def line(self):
        line = await asyncio.wait_for_ms(self.conn.readline(_MAX_LINE), self.timeout_ms)
        if line is None:
            raise Failed("overlong reply")
        return line

    async def command(self, text):
        conn = self.conn
        if text:
            conn.put(text.encode())
            conn.put(b"\r\n")
            await conn.flush()
        self.text = _text(await self.line())
        return self.text[:3] == "+OK"

    async def body(self, each, most):
        """Reads a multi-line reply's lines (dot-unstuffed) to its end, giving each to `each`."""
        for _ in range(most):
            line = await self.line()
            if len(line) and line[0] == 46:  # "."
                if len(line) == 1:
                    return
                line = line[1:]
            each(line)
        raise Failed("overlong reply")

    async def capa(self):
        # The capabilities' names (RFC 2449), or None when the server has no CAPA.
        if not await self.command("CAPA"):
            return None
        names = []
        await self.body(lambda line: names.append(_text(line).split(" ")[0].upper()), 64)
        return names

    async def quit(self):
        try:
            await self.command("QUIT")
        except Exception:
            pass


# ---- the passes


async def run(app, collector):
    """One pass over the accounts: polls each one that is due (or asked for: collector.force).
    Returns the milliseconds until the next is due, or None when there is no account."""
    ids = []
    try:
        for entry in os.ilistdir(app.flash + "/collect"):
            if entry[0].endswith(".json"):
                ids.append(entry[0][:-5])
    except OSError:
        pass
    status = collector.status
    for aid in list(status):
        if aid not in ids:
            del status[aid]
    force = collector.force
    collector.force = None
    scale = app.config["collect_time_scale"]
    wait = None
    for aid in ids:
        st = status.get(aid)
        now = time.ticks_ms()
        if st is None:  # (see collecting.py)
            st = status[aid] = [None, "not polled yet", 0, 0, now, 0, 0]
        due = time.ticks_diff(st[4], now)
        if due > 0 and not (force is True or (force and aid in force)):
            wait = due if wait is None or due < wait else wait
            continue
        try:
            with open("{}/collect/{}.json".format(app.flash, aid)) as f:
                account = json.load(f)
        except (OSError, ValueError):
            continue
        due = await poll(app, account, st) * scale
        st[4] = time.ticks_add(time.ticks_ms(), due)
        wait = due if wait is None or due < wait else wait
        account = None
        gc.collect()
    return wait


async def poll(app, account, st):
    """Polls one account and logs one line; returns the seconds until its next poll."""
    st[0] = clock(app)
    st[2] = st[6] = 0
    delay = account["interval"] * 60
    ok = False
    for again in (2, 1, 0):
        try:
            result = await _poll(app, account, st)
            ok = True
        except MemoryError:
            # The reserve given up (heap.py) and the poll made again after a moment (what a
            # session or console request held meanwhile is then freed): what it did is
            # recorded, what it did not is done now; a third shortage waits a little longer.
            app.relieve_memory()
            result = "not enough memory now (polled again soon)"
            delay = _SHORT
            if again:
                await asyncio.sleep_ms(500)
                continue
        except Failed as e:
            result = e.args[0]
        except asyncio.CancelledError:
            # Stopped for a client (collecting.py): nothing half-done is kept (the message in
            # transfer is discarded, deletions not yet followed by QUIT are not made), and the
            # account is due again at the next pass.
            app.log.info("collect", "{} {}: {} fetched; stopped for a client, the rest at the next pass".format(
                account["id"], account["user"], st[2]))
            st[1] = "stopped for a client"
            raise
        break
    if result.startswith("the clock"):
        delay = _SOON
    elif result.endswith("yielded to clients"):
        delay = 1  # (the pass waits for the sessions to end)
    st[1] = result = result.replace("\n", " ")
    st[5] += 1  # (collect.now's host waits for this count: the poll's result is in)
    line = "{} {}@{}:{} for {}: {} fetched, {} deleted; {}".format(
        account["id"], account["login"], account["host"], account["port"], account["user"], st[2], st[6], result)
    if ok:
        app.log.info("collect", line)
    else:
        app.log.warn("collect", line)
    return delay


async def _poll(app, account, st):
    if not app.storage_ready():
        raise Failed("mail storage is not available")
    user = account["user"]
    if not app.users.exists(user):
        raise Failed("no user " + user)
    store = app.store
    base = "{}/collect/{}".format(store.root, account["id"])
    try:
        os.mkdir(store.root + "/collect")
    except OSError:
        pass
    settle(base + ".UID", base + ".NEW", base + ".JNL")
    host = account["host"]
    port = account["port"]
    tls = None
    if account["security"] != "plain":
        tls = outbound.context(app)
        if isinstance(tls, str):
            raise Failed(tls + " (no connection made)")
        tls = ClientTls(tls, host)
    timeout = app.config["collect_timeout"] * 1000
    place = False
    conn = None
    pop = None
    collector = app.collector
    slot = None
    try:
        if tls is not None:
            place = await outbound.tls_place(app)
        streams = await asyncio.wait_for_ms(asyncio.open_connection(host, port), timeout)
        # Implicit TLS: the socket is wrapped first, while the heap has a block for it.
        wrapped = tls.wrap(streams[0].s) if account["security"] == "tls" else None
        # The buffers: with no client connected, a client place's, made at boot (a pass that
        # began so stops when a client comes, and gives it back: collecting.py); beside
        # clients, buffers of its own.
        if app.free_slots and not app.sessions:
            slot = app.free_slots.pop()
            collector.borrowed = 1
        conn = Connection(streams[0], slot or _Slot())
        if wrapped is not None:
            conn.sock = streams[0].s = wrapped
            conn.handshaking = True
        streams = wrapped = None
        pop = _Pop(conn, timeout)
        return await _session(app, account, pop, tls, base, st)
    except (Failed, MemoryError):
        raise
    except Exception as e:  # the connection, TLS (a certificate not verified), the card
        text = "timed out" if isinstance(e, asyncio.TimeoutError) else "{}: {}".format(type(e).__name__, str(e).strip())
        raise Failed("{}:{}: {}{}".format(host, port, text, "" if pop is not None and pop.login_sent else _NO_LOGIN))
    finally:
        await outbound.end(app, conn, place)
        if slot is not None:
            app.free_slots.append(slot)
            collector.borrowed = 0


async def _session(app, account, pop, tls, base, st):
    conn = pop.conn
    security = account["security"]
    if security == "tls":
        await outbound.handshake(conn, pop.timeout_ms)  # (the socket was wrapped by _poll)
    if not await pop.command(None):
        raise Failed("greeting: " + pop.text)
    capa = await pop.capa()
    if security == "stls":
        if capa is None or "STLS" not in capa or not await pop.command("STLS"):
            await pop.quit()  # nothing more said in plaintext
            raise Failed("no STLS" + _NO_LOGIN)
        conn.start_tls(tls)  # what the server sent before the handshake is dropped
        capa = await pop.capa()  # RFC 2595 §4: learned anew inside TLS
    if capa is not None and "UIDL" not in capa:
        await pop.quit()
        raise Failed(NO_UIDL)
    pop.login_sent = True
    if not await pop.command("USER " + account["login"]) or not await pop.command("PASS " + account["password"]):
        text = pop.text
        await pop.quit()
        raise Failed("login refused by {}: {}".format(account["host"], text))
    if not await pop.command("UIDL"):
        text = pop.text
        await pop.quit()
        raise Failed("{} ({})".format(NO_UIDL, text))
    uid, new, lst, journal = base + ".UID", base + ".NEW", base + ".LST", base + ".JNL"
    with open(lst, "wb") as f:

        def each(line):
            if len(line) > _MAX_ENTRY - 4:
                raise Failed("UIDL over 70 characters")
            f.write(line)
            f.write(b"\n")

        await pop.body(each, _MAX_LISTING)
    keep = account["keep"]
    days = account["delete_days"]
    limit = app.config["max_message_size"]
    if account["max_size"]:
        limit = min(limit, account["max_size"])
    now = clock(app)
    listed = fresh = skipped = 0
    complete = True
    known = _Known(uid)
    try:
        with open(lst, "rb") as f, open(journal, "ab") as fetched:
            for n, uidl in _listing(f):
                if app.sessions:
                    # Clients first: the rest at the next pass, once their sessions have ended
                    # (this pass's code and buffers then make room for them).
                    complete = False
                    break
                listed += 1
                stamp = known.find(uidl)
                if stamp is None:
                    fresh += 1
                    if not await _fetch(app, account, pop, n, limit):
                        skipped += 1
                        continue
                    stamp = clock(app)
                    # Recorded after the message is on the card, before any DELE.
                    fetched.write(b"%d %s\n" % (stamp, uidl))
                    fetched.flush()
                    sync()
                    st[2] += 1
                    st[3] += 1
                if not keep or (days and now - stamp >= days * _DAY):
                    # Only now: it is stored and recorded.
                    if not await pop.command("DELE {}".format(n)):
                        raise Failed("DELE {}: {}".format(n, pop.text))
                    st[6] += 1
        if not await pop.command("QUIT"):
            raise Failed("QUIT: " + pop.text)
        # The UIDLs the provider no longer lists are forgotten once it has listed them all.
        gone = sum(1 for found in known.listed() if not found) if complete else 0
        known.close()
        _rewrite(uid, new, known.listed() if complete else None, journal)
    finally:
        known.close()
    _remove(lst)
    return "ok: {} listed, {} new, {} left on the provider, {} forgotten{}".format(
        listed, fresh, skipped, gone, "" if complete else "; yielded to clients")


async def _fetch(app, account, pop, n, limit):
    """Stores message n in the user's mailbox; False when it is left on the provider."""
    log = app.log
    if not await pop.command("LIST {}".format(n)):
        return False  # gone since the listing
    size = pop.text.split(" ")
    size = int(size[2]) if len(size) > 2 and size[2].isdigit() else 0
    user = account["user"]
    trace = "Received: from {}\r\n\tby {} (pocketpost) with {}\r\n\tfor <{}@{}>;\r\n\t{}\r\n".format(
        account["host"], app.config["hostname"], "POP3" if account["security"] == "plain" else "POP3S",
        user, app.config["domains"][0], rfc5322_date(int(time.time()))).encode()
    incoming = None
    try:
        if size <= limit:
            incoming = app.store.incoming()
            try:
                incoming.write(trace, 0, len(trace))
            except OSError as e:
                incoming.failed(e)  # commit raises it: the poll ends, the message stays
            if not await pop.command("RETR {}".format(n)):
                log.warn("collect", "{}: RETR {}: {}".format(account["id"], n, pop.text))
                incoming.discard()
                return False
            size = await receive_data(pop.conn, incoming, limit)
        if size > limit:
            log.warn("collect", "{}: message {} of {} octets is over the limit of {}: left on the provider".format(account["id"], n, size, limit))
            if incoming is not None:
                incoming.discard()
            return False
        delivered = await incoming.commit([user], pop.conn.outbuf)
    except BaseException:
        if incoming is not None:
            incoming.discard()
        raise
    log.info("collect", "{}: message {} delivered to {} as {} ({} octets)".format(account["id"], n, user, delivered.get(user), size + len(trace)))
    return True
