# The settings' schema (every key, its default, its kind of value, when a change takes effect,
# whether it is a secret) and their validation. Loaded when the stored settings are read at boot
# and for the console's config requests, and unloaded after (config.py keeps only the values).
import json

from micropython import const

from .config import valid_domain

# Kinds of value (the table names them: _KINDS, in the order of these numbers).
KIND_INT = const(0)
KIND_TEXT = const(1)  # printable text up to `hi` characters
KIND_DOMAIN = const(2)
KIND_DOMAINS = const(3)  # 1-8 domains, a list or comma-separated text
KIND_ADDRESS = const(4)  # an IPv4 address to listen on
KIND_USER = const(5)
KIND_CHOICE = const(6)  # one of the words in `hi`
KIND_HOST = const(7)  # a DNS name or an IPv4 address, or "" (none)
KIND_EMAIL = const(8)  # a mail address local@domain, or "" (none)
KIND_NETWORKS = const(9)  # 0-16 IPv4 CIDR blocks (a.b.c.d/n), a list or comma-separated text
_KINDS = ("int", "text", "domain", "domains", "address", "user", "choice", "host", "email", "networks")

# One JSON line per key: [key, default, kind, lo, hi, when a change takes effect ("now" or
# "reboot"), secret]; a choice's words are its hi. Kept as text (one bytes object) and read a
# line at a time: made into a dict of tuples at import, the schema took ~8.8 KB of a 64-bit heap
# while loaded. (require_tls_for_auth "auto": TLS is required for logins once a certificate is
# installed.)
_TABLE = (
    b'["hostname", "pocketpost", "domain", 0, 0, "reboot", false]\n'
    b'["domains", ["pocketpost.local"], "domains", 0, 0, "now", false]\n'
    b'["postmaster", "postmaster", "user", 0, 0, "now", false]\n'
    b'["bind", "0.0.0.0", "address", 0, 0, "reboot", false]\n'
    # Every port can be off (0): a board may serve POP3S and submission only, say.
    b'["pop3_port", 110, "int", 0, 65535, "reboot", false]\n'
    b'["smtp_port", 25, "int", 0, 65535, "reboot", false]\n'
    # The TLS ports (0: off) listen only while a certificate is installed (pocketpost tls install).
    b'["pop3s_port", 995, "int", 0, 65535, "reboot", false]\n'
    b'["smtps_port", 465, "int", 0, 65535, "reboot", false]\n'
    # Message submission (RFC 6409): STARTTLS, and AUTH before MAIL. 0: off.
    b'["submission_port", 587, "int", 0, 65535, "reboot", false]\n'
    b'["require_tls_for_auth", "auto", "choice", 0, ["auto", "yes", "no"], "now", false]\n'
    # TLS sessions at once: each costs ~20-36 KB of the ESP32's IDF heap during the session.
    b'["tls_max_sessions", 1, "int", 0, 12, "now", false]\n'
    b'["tls_handshake_timeout", 30, "int", 5, 300, "now", false]\n'
    b'["max_clients", 4, "int", 1, 12, "reboot", false]\n'  # buffers are allocated at boot
    b'["max_message_size", 10240000, "int", 1024, 2147483647, "now", false]\n'
    b'["max_recipients", 100, "int", 100, 1000, "now", false]\n'
    b'["max_bad_commands", 10, "int", 1, 100, "now", false]\n'
    b'["pop3_idle_timeout", 600, "int", 10, 86400, "now", false]\n'
    b'["smtp_timeout", 300, "int", 10, 86400, "now", false]\n'
    b'["auth_fail_delay_ms", 2000, "int", 0, 60000, "now", false]\n'
    b'["auth_max_failures", 10, "int", 1, 1000, "now", false]\n'
    b'["auth_lockout", 300, "int", 1, 86400, "now", false]\n'
    b'["wifi_ssid", "", "text", 0, 32, "reboot", false]\n'
    b'["wifi_password", "", "text", 0, 64, "reboot", true]\n'
    # Relaying to other domains through a smarthost (relay.py; off while relay_host is "").
    b'["relay_host", "", "host", 0, 0, "now", false]\n'
    b'["relay_port", 587, "int", 1, 65535, "now", false]\n'
    b'["relay_security", "starttls", "choice", 0, ["starttls", "tls", "plain"], "now", false]\n'
    b'["relay_user", "", "text", 0, 255, "now", false]\n'
    b'["relay_password", "", "text", 0, 255, "now", true]\n'
    b'["relay_sender", "", "email", 0, 0, "now", false]\n'  # envelope sender of relayed mail
    b'["relay_networks", [], "networks", 0, 0, "now", false]\n'  # may relay without AUTH
    b'["relay_queue_messages", 100, "int", 1, 10000, "now", false]\n'
    b'["relay_queue_octets", 52428800, "int", 65536, 2147483647, "now", false]\n'
    b'["relay_rate", 30, "int", 1, 10000, "now", false]\n'  # messages a minute to the smarthost
    b'["relay_lifetime", 432000, "int", 60, 2592000, "now", false]\n'  # seconds until a bounce
    b'["relay_timeout", 300, "int", 5, 3600, "now", false]\n'  # seconds for each smarthost reply
    # Milliseconds the relay's clock counts as one second of the retry schedule and lifetime
    # (tests run the schedule fast).
    b'["relay_time_scale", 1000, "int", 1, 1000, "now", false]\n'
    # The collector (collect.py; its accounts: pocketpost collect add): seconds to wait for each
    # reply of a provider, and the milliseconds its schedule counts as a second (tests).
    b'["collect_timeout", 120, "int", 5, 3600, "now", false]\n'
    b'["collect_time_scale", 1000, "int", 1, 1000, "now", false]\n'
)


class _Schema:
    """The table as a read-only mapping: key -> (default, kind, lo, hi, applies, secret)."""

    def __contains__(self, key):
        return self._line(key) is not None

    def __getitem__(self, key):
        line = self._line(key)
        if line is None:
            raise KeyError(key)
        return _entry(line)[1:]

    def __iter__(self):
        for line in _TABLE.split(b"\n"):
            if line:
                yield line[2 : line.find(b'"', 2)].decode()

    def items(self):
        for line in _TABLE.split(b"\n"):
            if line:
                entry = _entry(line)
                yield entry[0], entry[1:]

    @staticmethod
    def _line(key):
        if not isinstance(key, str) or '"' in key:
            return None
        start = _TABLE.find(b'["' + key.encode() + b'",')
        if start < 0:
            return None
        return _TABLE[start : _TABLE.find(b"\n", start)]


def _entry(line):
    entry = json.loads(line)
    entry[2] = _KINDS.index(entry[2])
    return tuple(entry)


SCHEMA = _Schema()


def check(key, value):
    """The value normalized for `key`; raises ValueError saying what is allowed."""
    _, kind, lo, hi, _, _ = SCHEMA[key]
    if kind == KIND_INT:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError("must be an integer {}..{}".format(lo, hi))
        return value
    if kind == KIND_DOMAINS:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not 0 < len(value) <= 8:
            raise ValueError("must be 1..8 domain names, comma-separated")
        return [check("hostname", v) for v in value]
    if kind == KIND_NETWORKS:
        return _networks(value)
    if not isinstance(value, str):
        raise ValueError("must be text")
    if kind == KIND_HOST:
        if value and not valid_domain(value.lower()):
            raise ValueError("must be a host name such as smtp.example.org, or an IPv4 address")
        return value.lower()
    if kind == KIND_EMAIL:
        local, at, domain = value.rpartition("@")
        if value and (not 0 < len(local) <= 64 or not valid_domain(domain.lower()) or any(not " " < c <= "~" or c in "<>" for c in local)):
            raise ValueError("must be a mail address such as me@example.org, or empty")
        return value
    if kind == KIND_DOMAIN:
        if not valid_domain(value.lower()):
            raise ValueError("must be a domain name such as mail.example.org")
        return value.lower()
    if kind == KIND_ADDRESS:
        parts = value.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError("must be an IPv4 address such as 0.0.0.0")
        return value
    if kind == KIND_CHOICE:
        if value not in hi:
            raise ValueError("must be one of " + ", ".join(hi))
        return value
    if kind == KIND_USER:
        from .users import valid_name

        if not valid_name(value):
            raise ValueError("must be a user name (a-z 0-9 . _ -)")
        return value
    if len(value) > hi or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must be text of at most {} characters, no control characters".format(hi))
    return value


def _ipv4(text):
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return None
    return text


def _networks(value):
    # IPv4 CIDR blocks; a bare address is a /32.
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or len(value) > 16:
        raise ValueError("must be 0..16 IPv4 networks such as 192.168.1.0/24, comma-separated")
    out = []
    for item in value:
        address, _, bits = item.partition("/") if isinstance(item, str) else ("", "", "")
        if not bits:
            bits = "32"
        if _ipv4(address) is None or not bits.isdigit() or int(bits) > 32:
            raise ValueError("{} is not an IPv4 network such as 192.168.1.0/24".format(item))
        out.append("{}/{}".format(address, int(bits)))
    return out
