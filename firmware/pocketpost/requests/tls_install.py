# Console requests that install the TLS certificate, in chunks (a frame holds 1 KB): tls.begin,
# tls.chunk, tls.commit. The installation's code lives here, not in tls.py, so that a board
# serving TLS keeps only what serves in its heap; tls.show is requests/tls.py's.
import asyncio
import binascii
import hashlib
import os

from micropython import const

from .. import unload
from . import RequestError, arg
from ..mailbox import path_exists

# Longest certificate or key accepted: an RSA 4096 key in DER is ~2.4 KB.
MAX_FILE = const(8192)
_FILES = ("cert", "key")


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def begin(tls):
    """Empties the staged files (<name>.new) of an installation."""
    for name in _FILES:
        _remove(tls.path(name, "new"))
        with open(tls.path(name, "new"), "wb"):
            pass


def chunk(tls, name, data):
    """Appends base64 `data` to the staged file `name` ("cert" or "key")."""
    if name not in _FILES:
        raise ValueError("file must be cert or key")
    raw = binascii.a2b_base64(data)
    path = tls.path(name, "new")
    try:
        size = os.stat(path)[6]
    except OSError:
        raise ValueError("no installation begun (tls.begin)")
    if size + len(raw) > MAX_FILE:
        raise ValueError("{} is over {} octets".format(name, MAX_FILE))
    with open(path, "ab") as f:
        f.write(raw)


def commit(tls, digests, relieve):
    """Checks the staged files against their SHA-256 hex `digests` ({"cert", "key"}), tries
    them in a new context, then puts them in place. Returns "now" when the new context serves
    new sessions at once, "reboot" when the heap had no room to build it now (a context takes
    ~3 KB in one piece): the files are in place and load at the next boot. Raises ValueError
    when the files are damaged or not a usable certificate and key."""
    for name in _FILES:
        digest = binascii.hexlify(hashlib.sha256(tls.staged(name)).digest()).decode()
        if digest != digests.get(name):
            raise ValueError("{} arrived damaged (SHA-256 differs); install again".format(name))
    from .. import x509

    try:
        x509.describe(tls.staged("cert"))  # a certificate, whatever the heap
    finally:
        unload(x509.__name__)
    context = None
    for _ in range(2):  # a second time with the heap relieved (its reserve given up)
        try:
            context = tls.context_from(tls.path("cert", "new"), tls.path("key", "new"))
            break
        except MemoryError:
            relieve()  # the current context (if any) serves until the next boot
    # The pair is put in place together: both renames (LittleFS renames atomically, also over
    # the old file) are made from names built beforehand, and should the heap run short between
    # them, the other one is made after relief, so a certificate never lies beside another's key.
    moves = [(tls.path(name, "new"), tls.path(name, "der")) for name in _FILES]
    for _ in range(2):
        try:
            for new, der in moves:
                if path_exists(new):
                    os.rename(new, der)
            break
        except MemoryError:
            relieve()
    tls.pending = context is None
    if context is None:
        return "reboot"
    tls.context = context
    return "now"


def tls_begin(app, args):
    begin(app.load_tls())
    return {}


def tls_chunk(app, args):
    file = arg(args, "file", str)
    try:
        chunk(app.load_tls(), file, arg(args, "data", str))
    except ValueError as e:
        raise RequestError("INVALID", str(e))
    return {}


def tls_commit(app, args):
    try:
        digests = {"cert": arg(args, "cert_sha256", str), "key": arg(args, "key_sha256", str)}
        applies = commit(app.load_tls(), digests, app.relieve_memory)
    except ValueError as e:
        raise RequestError("INVALID", "the certificate or key is not usable: {}".format(e))
    except MemoryError:
        # Short before the new files were put in place (commit): they stay staged, and
        # the same tls.commit can be sent again.
        app.relieve_memory()
        raise RequestError("NOMEM", "not enough memory to install the certificate now; the installed one (or none) is unchanged, send tls.commit again")
    if applies == "now":
        asyncio.create_task(app.start_tls_listeners())
    app.log.info("console", "TLS certificate installed (takes effect {})".format(applies))
    # The change is made: a shortage from here on must not make the console run the request
    # again (the staged files are gone), so the reply says what it can.
    try:
        from .tls import tls_show

        shown = tls_show(app, args)
    except MemoryError:
        shown = {}
    shown["applies"] = applies
    return shown
