# TLS for the servers: the certificate and key on internal flash (DER: MicroPython's ssl takes
# no PEM keys), the server context built from them, their installation over the console, and the
# limit on sessions at once (on an ESP32 each costs ~20-36 KB of the IDF heap while it lasts).
#
# Imported only once a certificate is installed (or being installed): a board without TLS
# spends no heap on it. A context takes ~3 KB of the GC heap in one block, so boot.py builds it
# early, while the heap is in one piece.
import binascii
import gc
import hashlib
import os
import ssl

from micropython import const

# Longest certificate or key accepted: an RSA 4096 key in DER is ~2.4 KB.
MAX_FILE = const(8192)
_FILES = ("cert", "key")


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Tls:
    def __init__(self, flash, log):
        self.dir = flash + "/tls"
        self.log = log
        self.context = None
        self.sessions = 0  # TLS sessions now
        try:
            os.mkdir(self.dir)
        except OSError:
            pass

    def _path(self, name, suffix):
        return "{}/{}.{}".format(self.dir, name, suffix)

    def load(self):
        """Builds the server context from the installed files; raises ValueError or OSError
        when they are missing or unusable."""
        self.context = self._context(self._path("cert", "der"), self._path("key", "der"))

    @staticmethod
    def _context(cert_path, key_path):
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

    # ---- installation over the console: begin, chunks, commit

    def begin(self):
        for name in _FILES:
            _remove(self._path(name, "new"))
            with open(self._path(name, "new"), "wb"):
                pass

    def chunk(self, name, data):
        """Appends base64 `data` to the staged file `name` ("cert" or "key")."""
        if name not in _FILES:
            raise ValueError("file must be cert or key")
        raw = binascii.a2b_base64(data)
        path = self._path(name, "new")
        try:
            size = os.stat(path)[6]
        except OSError:
            raise ValueError("no installation begun (tls.begin)")
        if size + len(raw) > MAX_FILE:
            raise ValueError("{} is over {} octets".format(name, MAX_FILE))
        with open(path, "ab") as f:
            f.write(raw)

    def commit(self, digests):
        """Checks the staged files against their SHA-256 hex `digests` ({"cert", "key"}), tries
        them in a new context, then puts them in place. Returns "now" when the new context
        serves new sessions at once, "reboot" when the heap had no room to build it now (a
        context takes ~3 KB in one piece): the files are in place and load at the next boot.
        Raises ValueError when the files are damaged or not a usable certificate and key."""
        for name in _FILES:
            digest = binascii.hexlify(hashlib.sha256(_read(self._path(name, "new"))).digest()).decode()
            if digest != digests.get(name):
                raise ValueError("{} arrived damaged (SHA-256 differs); install again".format(name))
        from . import unload, x509

        try:
            x509.describe(_read(self._path("cert", "new")))  # a certificate, whatever the heap
        finally:
            unload(x509.__name__)
        gc.collect()
        try:
            context = self._context(self._path("cert", "new"), self._path("key", "new"))
        except MemoryError:
            context = None  # the current context (if any) serves until the next boot
        for name in _FILES:
            # LittleFS renames atomically, also over the old file.
            os.rename(self._path(name, "new"), self._path(name, "der"))
        if context is None:
            return "reboot"
        self.context = context
        return "now"

    def installed(self):
        """True when a certificate and its key are on the flash."""
        try:
            os.stat(self._path("cert", "der"))
            os.stat(self._path("key", "der"))
            return True
        except OSError:
            return False

    def certificate(self):
        return _read(self._path("cert", "der"))
