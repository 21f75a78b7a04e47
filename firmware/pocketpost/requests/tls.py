# Console requests for the TLS certificate: installed in chunks (a frame holds 1 KB), shown from
# its DER: tls.begin, tls.chunk, tls.commit, tls.show.
import asyncio

from .. import unload
from ..console import RequestError, arg


def tls_begin(app, args):
    app.load_tls().begin()
    return {}


def tls_chunk(app, args):
    file = arg(args, "file", str)
    try:
        app.load_tls().chunk(file, arg(args, "data", str))
    except ValueError as e:
        raise RequestError("INVALID", str(e))
    return {}


def tls_commit(app, args):
    try:
        digests = {"cert": arg(args, "cert_sha256", str), "key": arg(args, "key_sha256", str)}
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
    from .. import x509

    try:
        return x509.describe(app.tls.certificate())
    finally:
        unload(x509.__name__)  # needed for this request only
