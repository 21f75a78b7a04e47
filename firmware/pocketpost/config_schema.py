# The settings' schema (every key, its default, its kind of value, when a change takes effect,
# whether it is a secret) and their validation. Loaded when the stored settings are read at boot
# and for the console's config requests, and unloaded after (config.py keeps only the values).
from micropython import const

from .config import valid_domain

# When a change takes effect.
NOW = "now"
REBOOT = "reboot"

# Kinds of value.
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

# Values of require_tls_for_auth: "auto" requires TLS for logins once a certificate is installed.
TLS_AUTH_CHOICES = ("auto", "yes", "no")

# key: (default, kind, lo, hi, when it takes effect, secret)
SCHEMA = {
    "hostname": ("pocketpost", KIND_DOMAIN, 0, 0, REBOOT, False),
    "domains": (["pocketpost.local"], KIND_DOMAINS, 0, 0, NOW, False),
    "postmaster": ("postmaster", KIND_USER, 0, 0, NOW, False),
    "bind": ("0.0.0.0", KIND_ADDRESS, 0, 0, REBOOT, False),
    # Every port can be off (0): a board may serve POP3S and submission only, say.
    "pop3_port": (110, KIND_INT, 0, 65535, REBOOT, False),
    "smtp_port": (25, KIND_INT, 0, 65535, REBOOT, False),
    # The TLS ports (0: off) listen only while a certificate is installed (pocketpost tls install).
    "pop3s_port": (995, KIND_INT, 0, 65535, REBOOT, False),
    "smtps_port": (465, KIND_INT, 0, 65535, REBOOT, False),
    # Message submission (RFC 6409): STARTTLS, and AUTH before MAIL. 0: off.
    "submission_port": (587, KIND_INT, 0, 65535, REBOOT, False),
    "require_tls_for_auth": ("auto", KIND_CHOICE, 0, TLS_AUTH_CHOICES, NOW, False),
    # TLS sessions at once: each costs ~20-36 KB of the ESP32's IDF heap during the session.
    "tls_max_sessions": (1, KIND_INT, 0, 12, NOW, False),
    "tls_handshake_timeout": (30, KIND_INT, 5, 300, NOW, False),
    "max_clients": (4, KIND_INT, 1, 12, REBOOT, False),  # buffers are allocated at boot
    "max_message_size": (10240000, KIND_INT, 1024, 2147483647, NOW, False),
    "max_recipients": (100, KIND_INT, 100, 1000, NOW, False),
    "max_bad_commands": (10, KIND_INT, 1, 100, NOW, False),
    "pop3_idle_timeout": (600, KIND_INT, 10, 86400, NOW, False),
    "smtp_timeout": (300, KIND_INT, 10, 86400, NOW, False),
    "auth_fail_delay_ms": (2000, KIND_INT, 0, 60000, NOW, False),
    "auth_max_failures": (10, KIND_INT, 1, 1000, NOW, False),
    "auth_lockout": (300, KIND_INT, 1, 86400, NOW, False),
    "wifi_ssid": ("", KIND_TEXT, 0, 32, REBOOT, False),
    "wifi_password": ("", KIND_TEXT, 0, 64, REBOOT, True),
    # Relaying to other domains through a smarthost (relay.py; off while relay_host is "").
    "relay_host": ("", KIND_HOST, 0, 0, NOW, False),
    "relay_port": (587, KIND_INT, 1, 65535, NOW, False),
    "relay_security": ("starttls", KIND_CHOICE, 0, ("starttls", "tls", "plain"), NOW, False),
    "relay_user": ("", KIND_TEXT, 0, 255, NOW, False),
    "relay_password": ("", KIND_TEXT, 0, 255, NOW, True),
    "relay_sender": ("", KIND_EMAIL, 0, 0, NOW, False),  # envelope sender of relayed mail
    "relay_networks": ([], KIND_NETWORKS, 0, 0, NOW, False),  # may relay without AUTH
    "relay_queue_messages": (100, KIND_INT, 1, 10000, NOW, False),
    "relay_queue_octets": (52428800, KIND_INT, 65536, 2147483647, NOW, False),
    "relay_rate": (30, KIND_INT, 1, 10000, NOW, False),  # messages a minute to the smarthost
    "relay_lifetime": (432000, KIND_INT, 60, 2592000, NOW, False),  # seconds until a bounce
    "relay_timeout": (300, KIND_INT, 5, 3600, NOW, False),  # seconds for each smarthost reply
    # Milliseconds the relay's clock counts as one second of the retry schedule and lifetime
    # (tests run the schedule fast).
    "relay_time_scale": (1000, KIND_INT, 1, 1000, NOW, False),
    # The collector (collect.py; its accounts: pocketpost collect add): seconds to wait for each
    # reply of a provider, and the milliseconds its schedule counts as a second (tests).
    "collect_timeout": (120, KIND_INT, 5, 3600, NOW, False),
    "collect_time_scale": (1000, KIND_INT, 1, 1000, NOW, False),
}





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
