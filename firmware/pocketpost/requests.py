# The console's requests (docs/console-protocol.md): what each does, apart from the framing
# (console.py), which imports this module for each request and unloads it afterwards.
import asyncio
import gc
import micropython

from . import VERSION, unload
from .config import SCHEMA
from .console import PROTOCOL, RequestError, Streamed
from .users import valid_name


def _arg(args, key, kind, required=True):
    value = args.get(key)
    if value is None:
        if required:
            raise RequestError("INVALID", "missing argument {}".format(key))
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError("INVALID", "argument {} has the wrong type".format(key))
    return value


def hello(app, args):
    return {"protocol": PROTOCOL, "firmware": VERSION, "board": app.board.name}


def info(app, args):
    from .heap import largest_block

    gc.collect()
    info = {
        "firmware": VERSION,
        "board": app.board.name,
        "uptime_s": app.log.uptime_ms() // 1000,
        "heap_free": gc.mem_free(),
        "heap_used": gc.mem_alloc(),
        "heap_max_block": largest_block(),
        "hostname": app.config["hostname"],
        "domains": app.config["domains"],
        "bind": app.address,
        "ports": {"pop3": app.config["pop3_port"], "smtp": app.config["smtp_port"]},
        "listening": sorted(listener.port for listener in app.listeners),
        "tls": {
            "certificate": app.tls_ready(),
            "required_for_auth": app.tls_required_for_auth(),
            "sessions": app.tls.sessions if app.tls else 0,
        },
        "clients": len(app.sessions),
        "users": sum(1 for _ in app.users.names()),
    }
    info["storage"] = app.storage_info()
    # Bytes allocated since boot, where the port counts them (MICROPY_MEM_STATS): allocation per
    # message predicts GC pauses on a board. (Its mem_peak is no high-water mark of the heap:
    # memory the collector reclaims is never subtracted.)
    if hasattr(micropython, "mem_total"):
        info["heap_allocated_total"] = micropython.mem_total()
    info.update(app.board.info())
    return info


def user_add(app, args):
    name = _arg(args, "name", str)
    app.users.add(name, _arg(args, "hash", str), _arg(args, "apop", str, False))
    app.log.info("console", "user {} added".format(name))
    return {"name": name}


def user_del(app, args):
    name = _arg(args, "name", str)
    purge = _arg(args, "purge", bool, False)
    if purge and name in app.store.locked:
        raise RequestError("BUSY", "mailbox {} is in use by a POP3 session".format(name))
    app.users.remove(name)
    if purge and app.storage_ready() and app.store.mailbox(name).exists():
        app.store.remove_mailbox(name)
    app.log.info("console", "user {} deleted{}".format(name, " with mailbox" if purge else ""))
    return {"name": name, "purged": bool(purge)}


def user_passwd(app, args):
    name = _arg(args, "name", str)
    # "apop": a new secret, null to remove it, absent to keep it.
    apop = args["apop"] if "apop" in args else False
    if apop is not None and apop is not False and not isinstance(apop, str):
        raise RequestError("INVALID", "argument apop has the wrong type")
    app.users.set_password(name, _arg(args, "hash", str), apop)
    app.log.info("console", "password of {} changed".format(name))
    return {"name": name}


def user_check(app, args):
    """The iterations and salt of a user's stored hash (not secret); with "hash", whether the
    stored hash is that one. A host tells a password changed on the board from the one it
    wants without the board revealing its hash (a key compared here, in constant time)."""
    from binascii import hexlify

    from .crypto import equal, parse_hash

    name = _arg(args, "name", str)
    record = app.users.get(name)  # None for an unknown or invalid name
    if record is None:
        raise RequestError("NOTFOUND", "no user {}".format(name))
    iterations, salt, key = parse_hash(record["hash"])
    out = {"name": name, "iterations": iterations, "salt": hexlify(salt).decode()}
    given = _arg(args, "hash", str, False)
    if given is not None:
        try:
            given_iterations, given_salt, given_key = parse_hash(given)
        except ValueError as e:
            raise RequestError("INVALID", str(e))
        out["same"] = given_iterations == iterations and given_salt == salt and equal(given_key, key)
    return out


def user_list(app, args):
    return Streamed("users", _users(app))


def _users(app):
    for name in app.users.names():
        record = app.users.get(name) or {}
        entry = {"name": name, "apop": "apop" in record, "messages": 0}
        if app.storage_ready():
            box = app.store.mailbox(name)
            if box.exists():
                entry["messages"] = box.count()
        yield entry


def config_get(app, args):
    key = _arg(args, "key", str, False)
    config = app.config
    if key is None:
        # One part per key, {key: value}; the host merges them into one object again.
        return Streamed("config", ({k: config.shown(k)} for k in SCHEMA), {"overridden": sorted(config.overrides), "object": True})
    if key not in SCHEMA:
        raise RequestError("INVALID", "unknown key {}; known: {}".format(key, ", ".join(sorted(SCHEMA))))
    return {"key": key, "value": config.shown(key), "overridden": key in config.overrides}


def config_set(app, args):
    key = _arg(args, "key", str)
    if "value" not in args:
        raise RequestError("INVALID", "missing argument value")
    config = app.config
    try:
        value, applies = config.set(key, args["value"])
    except KeyError as e:
        raise RequestError("INVALID", e.args[0])
    except ValueError as e:
        raise RequestError("INVALID", "{}: {}".format(key, e))
    if SCHEMA[key][5]:
        value = "********"
    app.log.info("console", "config {} set".format(key))
    return {"key": key, "value": value, "applies": applies, "overridden": key in config.overrides}


def mailbox_stats(app, args):
    name = _arg(args, "name", str, False)
    if not app.storage_ready():
        raise RequestError("STORAGE", "mail storage is not available")
    if name is not None:
        if not valid_name(name):
            raise RequestError("INVALID", "bad user name")
        if not app.store.mailbox(name).exists() and app.users.get(name) is None:
            raise RequestError("NOTFOUND", "no user or mailbox {}".format(name))
    return Streamed("mailboxes", _mailboxes(app, [name] if name is not None else app.users.names()))


def _mailboxes(app, names):
    buf = bytearray(400)
    for n in names:
        box = app.store.mailbox(n)
        messages = octets = 0
        if box.exists():
            messages, octets = box.totals(buf)
        yield {"name": n, "messages": messages, "octets": octets, "locked": n in app.store.locked}


def log_tail(app, args):
    n = _arg(args, "n", int, False)
    return Streamed("lines", app.log.tail(20 if n is None else max(0, n)))


# ---- TLS certificate: installed in chunks (a frame holds 1 KB), shown from its DER


def tls_begin(app, args):
    app.load_tls().begin()
    return {}


def tls_chunk(app, args):
    file = _arg(args, "file", str)
    try:
        app.load_tls().chunk(file, _arg(args, "data", str))
    except ValueError as e:
        raise RequestError("INVALID", str(e))
    return {}


def tls_commit(app, args):
    digests = {"cert": _arg(args, "cert_sha256", str), "key": _arg(args, "key_sha256", str)}
    try:
        applies = app.load_tls().commit(digests)
    except ValueError as e:
        raise RequestError("INVALID", "the certificate or key is not usable: {}".format(e))
    except MemoryError:
        # Short before the new files were put in place (Tls.commit): they stay staged, and
        # the same tls.commit can be sent again.
        app.relieve_memory()
        raise RequestError("NOMEM", "not enough memory to install the certificate now; the installed one (or none) is unchanged, send tls.commit again")
    if applies == "now":
        asyncio.create_task(app.start_tls_listeners())
    app.log.info("console", "TLS certificate installed (takes effect {})".format(applies))
    shown = tls_show(app, args)
    shown["applies"] = applies
    return shown


def tls_show(app, args):
    if app.tls is None or not app.tls.installed():
        raise RequestError("NOTFOUND", "no TLS certificate is installed")
    from . import x509

    try:
        return x509.describe(app.tls.certificate())
    finally:
        unload(x509.__name__)  # needed for this request only


def reboot(app, args):
    app.log.info("console", "reboot requested")
    app.stop(reboot=True)
    return {}


# command: handler(app, args) -> JSON value
HANDLERS = {
    "hello": hello,
    "info": info,
    "user.add": user_add,
    "user.del": user_del,
    "user.passwd": user_passwd,
    "user.list": user_list,
    "user.check": user_check,
    "config.get": config_get,
    "config.set": config_set,
    "mailbox.stats": mailbox_stats,
    "log.tail": log_tail,
    "reboot": reboot,
    "tls.begin": tls_begin,
    "tls.chunk": tls_chunk,
    "tls.commit": tls_commit,
    "tls.show": tls_show,
}
