# The appliance's settings: a schema of known keys with defaults and validation, stored as one
# JSON file on internal flash. Unknown keys and bad values are refused with a message that says
# what is allowed. Board-level overrides (the unix board's command line) apply on top for one run.
import json
import os

from micropython import const

# When a change takes effect.
NOW = "now"
REBOOT = "reboot"


_HOST_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-."


def valid_domain(name):
    """A DNS name: labels of 1-63 letters, digits and hyphens, 255 octets at most."""
    if not 0 < len(name) <= 255:
        return False
    for label in name.split("."):
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if c not in _HOST_CHARS:
                return False
    return True


# Kinds of value.
_INT = const(0)
_TEXT = const(1)  # printable text up to `hi` characters
_DOMAIN = const(2)
_DOMAINS = const(3)  # 1-8 domains, a list or comma-separated text
_ADDRESS = const(4)  # an IPv4 address to listen on
_USER = const(5)
_CHOICE = const(6)  # one of the words in `hi`

# Values of require_tls_for_auth: "auto" requires TLS for logins once a certificate is installed.
TLS_AUTH_CHOICES = ("auto", "yes", "no")

# key: (default, kind, lo, hi, when it takes effect, secret)
SCHEMA = {
    "hostname": ("pocketpost", _DOMAIN, 0, 0, REBOOT, False),
    "domains": (["pocketpost.local"], _DOMAINS, 0, 0, NOW, False),
    "postmaster": ("postmaster", _USER, 0, 0, NOW, False),
    "bind": ("0.0.0.0", _ADDRESS, 0, 0, REBOOT, False),
    # Every port can be off (0): a board may serve POP3S and submission only, say.
    "pop3_port": (110, _INT, 0, 65535, REBOOT, False),
    "smtp_port": (25, _INT, 0, 65535, REBOOT, False),
    # The TLS ports (0: off) listen only while a certificate is installed (pocketpost tls install).
    "pop3s_port": (995, _INT, 0, 65535, REBOOT, False),
    "smtps_port": (465, _INT, 0, 65535, REBOOT, False),
    # Message submission (RFC 6409): STARTTLS, and AUTH before MAIL. 0: off.
    "submission_port": (587, _INT, 0, 65535, REBOOT, False),
    "require_tls_for_auth": ("auto", _CHOICE, 0, TLS_AUTH_CHOICES, NOW, False),
    # TLS sessions at once: each costs ~20-36 KB of the ESP32's IDF heap during the session.
    "tls_max_sessions": (1, _INT, 0, 12, NOW, False),
    "tls_handshake_timeout": (30, _INT, 5, 300, NOW, False),
    "max_clients": (4, _INT, 1, 12, REBOOT, False),  # buffers are allocated at boot
    "max_message_size": (10240000, _INT, 1024, 2147483647, NOW, False),
    "max_recipients": (100, _INT, 100, 1000, NOW, False),
    "max_bad_commands": (10, _INT, 1, 100, NOW, False),
    "pop3_idle_timeout": (600, _INT, 10, 86400, NOW, False),
    "smtp_timeout": (300, _INT, 10, 86400, NOW, False),
    "auth_fail_delay_ms": (2000, _INT, 0, 60000, NOW, False),
    "auth_max_failures": (10, _INT, 1, 1000, NOW, False),
    "auth_lockout": (300, _INT, 1, 86400, NOW, False),
    "wifi_ssid": ("", _TEXT, 0, 32, REBOOT, False),
    "wifi_password": ("", _TEXT, 0, 64, REBOOT, True),
}


def check(key, value):
    """The value normalized for `key`; raises ValueError saying what is allowed."""
    _, kind, lo, hi, _, _ = SCHEMA[key]
    if kind == _INT:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError("must be an integer {}..{}".format(lo, hi))
        return value
    if kind == _DOMAINS:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not 0 < len(value) <= 8:
            raise ValueError("must be 1..8 domain names, comma-separated")
        return [check("hostname", v) for v in value]
    if not isinstance(value, str):
        raise ValueError("must be text")
    if kind == _DOMAIN:
        if not valid_domain(value.lower()):
            raise ValueError("must be a domain name such as mail.example.org")
        return value.lower()
    if kind == _ADDRESS:
        parts = value.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError("must be an IPv4 address such as 0.0.0.0")
        return value
    if kind == _CHOICE:
        if value not in hi:
            raise ValueError("must be one of " + ", ".join(hi))
        return value
    if kind == _USER:
        from .users import valid_name

        if not valid_name(value):
            raise ValueError("must be a user name (a-z 0-9 . _ -)")
        return value
    if len(value) > hi or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must be text of at most {} characters, no control characters".format(hi))
    return value


class Config:
    """The settings: the board's command-line overrides, then what `config set` stored, then
    the board's own defaults (`board_defaults`), then SCHEMA's."""

    def __init__(self, root, overrides=None, board_defaults=None):
        self.path = root + "/config.json"
        self.stored = {}
        try:
            with open(self.path) as f:
                stored = json.load(f)
            for key, value in stored.items():
                if key in SCHEMA:
                    self.stored[key] = check(key, value)
        except (OSError, ValueError):
            pass  # no file yet, or a damaged one: defaults apply (`config set` writes it anew)
        self.overrides = overrides or {}
        self.board_defaults = board_defaults or {}

    def __getitem__(self, key):
        if key in self.overrides:
            return self.overrides[key]
        if key in self.stored:
            return self.stored[key]
        if key in self.board_defaults:
            return self.board_defaults[key]
        return SCHEMA[key][0]

    def shown(self, key):
        """The value of `key` as the console shows it: a secret that is set reads "********"."""
        value = self[key]
        if SCHEMA[key][5] and value:
            return "********"
        return value

    def set(self, key, value):
        """Validates and stores one key; returns (stored value, when it takes effect)."""
        if key not in SCHEMA:
            raise KeyError("unknown key {}; known: {}".format(key, ", ".join(sorted(SCHEMA))))
        value = check(key, value)
        self.stored[key] = value
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            json.dump(self.stored, f)
        os.rename(tmp, self.path)
        return value, SCHEMA[key][4]
