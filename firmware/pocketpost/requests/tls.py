# Console request tls.show: the installed certificate, described from its DER (x509.py). Its
# installation (tls.begin, tls.chunk, tls.commit) is requests/tls_install.py's.
from .. import unload
from . import RequestError


def tls_show(app, args):
    if app.tls is None or not app.tls.installed():
        raise RequestError("NOTFOUND", "no TLS certificate is installed")
    from .. import x509

    try:
        return x509.describe(app.tls.certificate())
    finally:
        unload(x509.__name__)  # needed for this request only
