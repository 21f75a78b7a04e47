# Console request for the mailboxes: mailbox.stats.
from . import RequestError, Streamed, arg
from ..users import valid_name


def mailbox_stats(app, args):
    name = arg(args, "name", str, False)
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
