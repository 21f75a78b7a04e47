# Console requests for the relay's CA certificates, which verify the smarthost (relay.py):
# relay.ca.begin, relay.ca.chunk, relay.ca.commit (installed in chunks, as tls.begin, .chunk,
# .commit), relay.ca.show; and the emulated board's relay.clock.
import binascii
import hashlib
import os

from .. import outbox, unload
from . import RequestError, arg

unload(outbox.__name__)  # kept by this module only: unloaded with it

_MAX_CA = 8  # as relay.py's
_MAX_CA_FILE = 8192


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
