# TLS for the servers: the certificate and key on internal flash (DER: MicroPython's ssl takes
# no PEM keys), the server context built from them, and the limit on sessions at once (on an ESP32 each costs ~20-36 KB of the IDF heap while it lasts).
#
# Imported only once a certificate is installed (or being installed): a board without TLS
# spends no heap on it. A context takes ~3 KB of the GC heap in one block, so boot.py builds it
# early, while the heap is in one piece.
#
# Its installation over the console (tls.begin, tls.chunk, tls.commit) is requests/tls.py's.
import os
import ssl


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Tls:
    def __init__(self, flash, log):
        self.dir = flash + "/tls"
        self.log = log
        self.context = None
        self.sessions = 0  # TLS sessions now
        self.pending = False  # a certificate installed that loads at the next boot
        try:
            os.mkdir(self.dir)
        except OSError:
            pass

    def path(self, name, suffix):
        return "{}/{}.{}".format(self.dir, name, suffix)

    def load(self):
        """Builds the server context from the installed files; raises ValueError or OSError
        when they are missing or unusable."""
        self.context = self.context_from(self.path("cert", "der"), self.path("key", "der"))

    @staticmethod
    def context_from(cert_path, key_path):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(_read(cert_path), _read(key_path))
        return context

    # ---- sessions

    def acquire(self, limit):
        """Takes one of `limit` session places; False when all are taken."""
        if self.context is None or self.sessions >= limit:
            return False
        self.sessions += 1
        return True

    def release(self):
        self.sessions -= 1

    def wrap(self, sock):
        """The server side of a TLS session over `sock`; the handshake runs as data moves."""
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def installed(self):
        """True when a certificate and its key are on the flash."""
        try:
            os.stat(self.path("cert", "der"))
            os.stat(self.path("key", "der"))
            return True
        except OSError:
            return False

    def certificate(self):
        return _read(self.path("cert", "der"))

    def staged(self, name):
        return _read(self.path(name, "new"))
