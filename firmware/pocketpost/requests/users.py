# Console requests for the user records: user.add, user.del, user.passwd, user.check,
# user.list. Only these requests change the records (users.py reads them for logins).
import json
import os

from .. import crypto
from . import RequestError, Streamed, arg
from ..users import MAX_APOP_SECRET, valid_name


def _write(users, name, record):
    # The new record's name starts with a dot, which no user name does (user "alice.new"
    # exists apart from alice's record being replaced).
    tmp = "{}/.{}.new".format(users.dir, name)
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.rename(tmp, users._path(name))
    users._apop_users = None


def _check_hash(hash_text):
    try:
        crypto.parse_hash(hash_text)
    except (ValueError, AttributeError) as e:
        raise RequestError("INVALID", str(e))


def _check_apop(secret):
    if not isinstance(secret, str) or not 0 < len(secret) <= MAX_APOP_SECRET:
        raise RequestError("INVALID", "APOP secret must be 1..{} characters".format(MAX_APOP_SECRET))


def _add(users, name, hash_text, apop=None):
    if not valid_name(name):
        raise RequestError("INVALID", "user name must be 1-64 of a-z 0-9 . _ - and not start or end with '.'")
    if users.get(name) is not None:
        raise RequestError("EXISTS", "user {} exists".format(name))
    _check_hash(hash_text)
    if apop is not None:
        _check_apop(apop)
    record = {"hash": hash_text}
    if apop is not None:
        record["apop"] = apop
    _write(users, name, record)


def _set_password(users, name, hash_text, apop=False):
    """Replaces the hash; `apop` is a new secret, None to remove it, False to keep it."""
    record = users.get(name)
    if record is None:
        raise RequestError("NOTFOUND", "no user {}".format(name))
    _check_hash(hash_text)
    if apop is not None and apop is not False:
        _check_apop(apop)
    record["hash"] = hash_text
    if apop is None:
        record.pop("apop", None)
    elif apop is not False:
        record["apop"] = apop
    _write(users, name, record)


def _remove(users, name):
    if users.get(name) is None:
        raise RequestError("NOTFOUND", "no user {}".format(name))
    os.remove(users._path(name))
    users._apop_users = None


def user_add(app, args):
    name = arg(args, "name", str)
    _add(app.users, name, arg(args, "hash", str), arg(args, "apop", str, False))
    app.log.info("console", "user {} added".format(name))
    return {"name": name}


def user_del(app, args):
    name = arg(args, "name", str)
    purge = arg(args, "purge", bool, False)
    if purge and name in app.store.locked:
        raise RequestError("BUSY", "mailbox {} is in use by a POP3 session".format(name))
    _remove(app.users, name)
    if purge and app.storage_ready() and app.store.mailbox(name).exists():
        app.store.remove_mailbox(name)
    app.log.info("console", "user {} deleted{}".format(name, " with mailbox" if purge else ""))
    return {"name": name, "purged": bool(purge)}


def user_passwd(app, args):
    name = arg(args, "name", str)
    # "apop": a new secret, null to remove it, absent to keep it.
    apop = args["apop"] if "apop" in args else False
    if apop is not None and apop is not False and not isinstance(apop, str):
        raise RequestError("INVALID", "argument apop has the wrong type")
    _set_password(app.users, name, arg(args, "hash", str), apop)
    app.log.info("console", "password of {} changed".format(name))
    return {"name": name}


def user_check(app, args):
    """The iterations and salt of a user's stored hash (not secret); with "hash", whether the
    stored hash is that one. A host tells a password changed on the board from the one it
    wants without the board revealing its hash (a key compared here, in constant time)."""
    from binascii import hexlify

    from ..crypto import equal, parse_hash

    name = arg(args, "name", str)
    record = app.users.get(name)  # None for an unknown or invalid name
    if record is None:
        raise RequestError("NOTFOUND", "no user {}".format(name))
    iterations, salt, key = parse_hash(record["hash"])
    out = {"name": name, "iterations": iterations, "salt": hexlify(salt).decode()}
    given = arg(args, "hash", str, False)
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
