# Console requests for the relay queue (outbox.py) and the CA certificates that verify the
# smarthost (relay.py): queue.list, queue.show, queue.flush, queue.delete, relay.ca.begin,
# relay.ca.chunk, relay.ca.commit, relay.ca.show.
import binascii
import hashlib
import os

from .. import outbox, unload
from . import RequestError, Streamed, arg

unload(outbox.__name__)  # kept by this module only: unloaded with it

_MAX_CA = 8  # as relay.py's
_MAX_CA_FILE = 8192


def _store(app):
    if not app.storage_ready():
        raise RequestError("STORAGE", "mail storage is not available")
    return app.store


def _envelope(app, args):
    qid = arg(args, "id", str).upper()
    env = outbox.read(_store(app), qid) if len(qid) == 8 and all(c in "0123456789ABCDEF" for c in qid) else None
    if env is None:
        raise RequestError("NOTFOUND", "no queued message {}".format(qid))
    return env


def queue_list(app, args):
    store = _store(app)
    return Streamed("messages", _listing(store))


def _listing(store):
    now = outbox.now_ms()
    for qid in outbox.each(outbox.ids(store)):
        env = outbox.read(store, qid)
        if env is not None:
            item = _as_dict(env, now)
            rcpts = item.pop("recipients")
            item["recipients"] = len(rcpts)
            item["pending"] = sum(1 for r in rcpts if r["state"] == "pending")
            yield item


def queue_show(app, args):
    return _as_dict(_envelope(app, args), outbox.now_ms())


def queue_flush(app, args):
    """Every queued message is due now (a retry at once)."""
    store = _store(app)
    count = 0
    for qid in outbox.each(outbox.ids(store)):
        env = outbox.read(store, qid)
        if env is not None and env.next:
            env.next = 0
            outbox.write(store, env)
            count += 1
    app.relay_kick()
    app.log.info("console", "relay queue flushed ({} messages)".format(count))
    return {"messages": count}


def queue_delete(app, args):
    env = _envelope(app, args)
    outbox.remove(app.store, env.id)
    app.log.info("console", "queued message {} deleted".format(env.id))
    return {"id": env.id}


# ---- CA certificates: installed in chunks, as tls.begin/chunk/commit

def _ca_dir(app):
    path = app.flash + "/relay"
    try:
        os.mkdir(path)
    except OSError:
        pass
    return path


def relay_ca_begin(app, args):
    folder = _ca_dir(app)
    for i in range(_MAX_CA):
        try:
            os.remove("{}/new{}.der".format(folder, i))
        except OSError:
            pass
    return {}


def relay_ca_chunk(app, args):
    index = arg(args, "index", int)
    if not 0 <= index < _MAX_CA:
        raise RequestError("INVALID", "at most {} CA certificates".format(_MAX_CA))
    try:
        raw = binascii.a2b_base64(arg(args, "data", str))
    except ValueError as e:
        raise RequestError("INVALID", "data is not base64: {}".format(e))
    path = "{}/new{}.der".format(_ca_dir(app), index)
    try:
        size = os.stat(path)[6]
    except OSError:
        size = 0
    if size + len(raw) > _MAX_CA_FILE:
        raise RequestError("INVALID", "certificate {} is over {} octets".format(index, _MAX_CA_FILE))
    with open(path, "ab") as f:
        f.write(raw)
    return {}


def relay_ca_commit(app, args):
    digests = arg(args, "sha256", list)
    if not 0 < len(digests) <= _MAX_CA:
        raise RequestError("INVALID", "1..{} certificates".format(_MAX_CA))
    folder = _ca_dir(app)
    from .. import x509

    shown = []
    try:
        for i, digest in enumerate(digests):
            with open("{}/new{}.der".format(folder, i), "rb") as f:
                der = f.read()
            if binascii.hexlify(hashlib.sha256(der).digest()).decode() != digest:
                raise RequestError("INVALID", "certificate {} arrived damaged (SHA-256 differs); install again".format(i))
            try:
                shown.append(x509.describe(der))
            except (ValueError, IndexError) as e:
                raise RequestError("INVALID", "certificate {} is not usable: {}".format(i, e))
    except OSError:
        raise RequestError("INVALID", "no installation begun, or a certificate is missing (relay.ca.begin, relay.ca.chunk)")
    finally:
        unload(x509.__name__)
    for i in range(_MAX_CA):
        try:
            os.remove("{}/ca{}.der".format(folder, i))
        except OSError:
            pass
    for i in range(len(digests)):
        os.rename("{}/new{}.der".format(folder, i), "{}/ca{}.der".format(folder, i))
    # The relay's context with the new certificates (~3 KB in one block): when the heap has
    # no such block now, it is made at the next boot.
    app.relay_context = None
    applies = "now"
    try:
        app.relay_context = outbox.client_context(app.flash)
    except MemoryError:
        app.relieve_memory()
        applies = "reboot"
    except ValueError as e:
        raise RequestError("INVALID", "the certificates are not usable: {}".format(e))
    app.log.info("console", "{} relay CA certificates installed (takes effect {})".format(len(digests), applies))
    return {"certificates": shown, "applies": applies}


def relay_clock(app, args):
    # Test hook (emulated board only): {"unset": true} makes the relay see the board's clock as
    # not set (a board waiting for NTP), {"unset": false} as set again.
    if not app.board.debug_requests:
        raise RequestError("UNKNOWN", "unknown command")
    app.relay_clock_unset = arg(args, "unset", bool)
    if not app.relay_clock_unset:
        app.relay_kick()
    return {"unset": app.relay_clock_unset}


def relay_ca_show(app, args):
    from .. import x509

    folder = app.flash + "/relay"
    shown = []
    try:
        for i in range(_MAX_CA):
            try:
                with open("{}/ca{}.der".format(folder, i), "rb") as f:
                    shown.append(x509.describe(f.read()))
            except OSError:
                pass
    finally:
        unload(x509.__name__)
    return {"certificates": shown}


def _as_dict(env, now):
    out = {"id": env.id, "from": env.sender, "size": env.size, "age_s": max(0, now - env.created) // 1000,
           "tries": env.tries, "next_s": max(0, env.next - now) // 1000, "error": env.error}
    out["recipients"] = [_rcpt_dict(r) for r in env.rcpts]
    return out


def _rcpt_dict(line):
    parts = line.split("\t")
    return {"address": parts[1], "state": {"P": "pending", "D": "delivered", "B": "bounced"}.get(parts[0], "?"),
            "reply": parts[2] if len(parts) > 2 else ""}


def summary(store):
    """The queue for `info`: messages, oldest age, next try, last error."""
    now = outbox.now_ms()
    messages = 0
    oldest = 0
    next_try = None
    error = ""
    for qid in outbox.each(outbox.ids(store)):
        env = outbox.read(store, qid)
        if env is None:
            continue
        messages += 1
        oldest = max(oldest, now - env.created)
        due = max(0, env.next - now)
        if next_try is None or due < next_try:
            next_try = due
        if env.error:
            error = env.error
    return {"messages": messages, "octets": _usage(store)[1], "oldest_s": oldest // 1000,
            "next_s": None if next_try is None else next_try // 1000, "last_error": error}


def _usage(store):
    from .. import enqueue

    try:
        return enqueue.usage(store)
    finally:
        unload(enqueue.__name__)
