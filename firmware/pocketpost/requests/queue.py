# Console requests for the relay queue (outbox.py): queue.list, queue.show, queue.flush,
# queue.delete; and the queue's summary in `info`. (The relay's CA certificates are
# requests/relay.py's: apart, this module is half the code loaded beside a listing.)
from .. import outbox, unload
from . import RequestError, Streamed, arg

unload(outbox.__name__)  # kept by this module only: unloaded with it


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
