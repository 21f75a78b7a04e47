# Console requests for the collector (collect.py): collect.list, collect.add, collect.del,
# collect.now, and the emulated board's test hook collect.clock. Routed by their prefix
# (console._handler) and unloaded after each request. An account is a JSON file on the
# flash, <flash>/collect/<ID>.json, its password in it (a secret: never in a reply or a log
# line); its ID is the first 8 hex digits of the SHA-256 of "user host login", so adding the
# same account again changes it.
import binascii
import hashlib
import json
import os

from ..config import valid_domain
from . import RequestError, Streamed, arg

_SECURITY = ("tls", "stls", "plain")
MIN_INTERVAL = 5  # minutes between polls, at least (providers ask clients not to poll more often)
MAX_INTERVAL = 1440
_MAX_TEXT = 255


def _folder(app):
    return app.flash + "/collect"


def _ids(app):
    out = []
    try:
        for entry in os.ilistdir(_folder(app)):
            if entry[0].endswith(".json"):
                out.append(entry[0][:-5])
    except OSError:
        pass
    return sorted(out)


def _read(app, aid):
    try:
        with open("{}/{}.json".format(_folder(app), aid)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def account_id(user, host, login):
    return binascii.hexlify(hashlib.sha256("{} {} {}".format(user, host, login).encode()).digest()[:4]).decode()


def _shown(app, account, now_ms=None):
    import time

    out = {}
    for key in ("id", "user", "host", "port", "security", "login", "interval", "keep", "delete_days", "max_size"):
        out[key] = account.get(key)
    out["password"] = "********"
    st = app.collector.status.get(account["id"]) if getattr(app, "collector", None) else None
    if st is None:
        out.update({"last_poll": None, "last_poll_ago_s": None, "result": "not polled yet", "fetched": 0,
                    "fetched_total": 0, "deleted": 0, "polls": 0, "next_s": None})
    else:
        now = int(time.time()) + getattr(app, "clock_offset", 0)
        out.update({"last_poll": st[0], "last_poll_ago_s": None if st[0] is None else max(0, now - st[0]),
                    "result": st[1], "fetched": st[2], "fetched_total": st[3], "deleted": st[6], "polls": st[5],
                    "next_s": max(0, time.ticks_diff(st[4], time.ticks_ms())) // (app.config["collect_time_scale"])})
    return out


def summary(app):
    """The accounts for `info`: last poll, its result, messages fetched, next poll."""
    out = []
    for aid in _ids(app):
        account = _read(app, aid)
        if account is not None:
            shown = _shown(app, account)
            out.append({k: shown[k] for k in ("id", "user", "host", "login", "last_poll_ago_s", "result", "fetched", "fetched_total", "next_s")})
    return out


def collect_list(app, args):
    return Streamed("accounts", (_shown(app, a) for a in (_read(app, aid) for aid in _ids(app)) if a is not None))


def _text(args, key, spaces=False):
    value = arg(args, key, str)
    low = 32 if spaces else 33
    if not value or len(value) > _MAX_TEXT or any(ord(c) < low or ord(c) == 127 for c in value):
        raise RequestError("INVALID", "{} must be 1..{} characters, no control characters{}".format(key, _MAX_TEXT, "" if spaces else " or spaces"))
    return value


def _int(args, key, default, lo, hi):
    value = arg(args, key, int, False)
    if value is None:
        return default
    if not lo <= value <= hi:
        raise RequestError("INVALID", "{} must be an integer {}..{}".format(key, lo, hi))
    return value


def collect_add(app, args):
    user = arg(args, "user", str)
    if not app.users.exists(user):
        raise RequestError("NOTFOUND", "no user {}".format(user))
    host = arg(args, "host", str).lower()
    if not valid_domain(host):
        raise RequestError("INVALID", "host must be a host name such as pop.gmail.com, or an IPv4 address")
    security = arg(args, "security", str, False) or "tls"
    if security not in _SECURITY:
        raise RequestError("INVALID", "security must be one of tls (POP3S, port 995), stls (STLS, port 110), plain")
    port = _int(args, "port", 995 if security == "tls" else 110, 1, 65535)
    login = _text(args, "login")
    password = _text(args, "password", True)
    keep = arg(args, "keep", bool, False)
    account = {
        "id": account_id(user, host, login),
        "user": user,
        "host": host,
        "port": port,
        "security": security,
        "login": login,
        "password": password,
        "interval": _int(args, "interval", 30, MIN_INTERVAL, MAX_INTERVAL),
        "keep": True if keep is None else keep,
        "delete_days": _int(args, "delete_days", 0, 0, 3650),
        "max_size": _int(args, "max_size", 0, 0, 2147483647),
    }
    folder = _folder(app)
    try:
        os.mkdir(folder)
    except OSError:
        pass
    path = "{}/{}.json".format(folder, account["id"])
    created = _read(app, account["id"]) is None
    with open(path + ".new", "w") as f:
        json.dump(account, f)
    os.rename(path + ".new", path)  # LittleFS renames atomically, also over the old file
    app.log.info("console", "collector account {} {} for {} from {}@{}:{}".format(
        account["id"], "added" if created else "changed", user, login, host, port))
    app.collect_kick([account["id"]])
    shown = _shown(app, account)
    shown["created"] = created
    return shown


def collect_del(app, args):
    aid = arg(args, "id", str).lower()
    account = _read(app, aid) if len(aid) == 8 and all(c in "0123456789abcdef" for c in aid) else None
    if account is None:
        raise RequestError("NOTFOUND", "no collector account {}".format(aid))
    os.remove("{}/{}.json".format(_folder(app), aid))
    if app.storage_ready():
        base = "{}/collect/{}".format(app.store.root, aid)
        for suffix in (".UID", ".NEW", ".LST", ".JNL"):
            try:
                os.remove(base + suffix)
            except OSError:
                pass
    if getattr(app, "collector", None):
        app.collector.status.pop(aid, None)
    app.log.info("console", "collector account {} deleted".format(aid))
    return {"id": aid}


def collect_now(app, args):
    """Polls the account `id` (or every account) now; the reply names them and their poll
    counts, which collect.list shows growing when the polls are done."""
    aid = arg(args, "id", str, False)
    ids = _ids(app)
    if aid is not None:
        aid = aid.lower()
        if aid not in ids:
            raise RequestError("NOTFOUND", "no collector account {}".format(aid))
        ids = [aid]
    polls = {}
    for i in ids:
        st = app.collector.status.get(i) if getattr(app, "collector", None) else None
        polls[i] = st[5] if st else 0
    if ids:
        app.collect_kick(ids)
        app.log.info("console", "collector: poll asked for {}".format(", ".join(ids)))
    return {"accounts": polls}


def collect_clock(app, args):
    # Test hook (emulated board only): moves the collector's wall clock `advance_s` seconds on.
    if not app.board.debug_requests:
        raise RequestError("UNKNOWN", "unknown command")
    app.clock_offset = getattr(app, "clock_offset", 0) + _int(args, "advance_s", 0, 0, 1 << 30)
    return {"offset_s": app.clock_offset}
