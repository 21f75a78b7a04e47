"""Provisioning a board over its console: users, configuration, status, logs, reboot.

Everything a request carries is checked here first, with the firmware's own rules, so bad input
is refused on the host before anything is sent; the board checks again.
"""

import re
import time
from dataclasses import dataclass

import serial

from .console import REPLY_PREFIX, ConsoleClient
from .errors import BoardError, BoardTimeout, PocketpostError, PortError
from .passwords import DEFAULT_ITERATIONS, check_hash, hash_password
from .transport import open_port

# The console protocol version this host speaks (docs/console-protocol.md).
PROTOCOL = 1
DEFAULT_TIMEOUT = 5.0
# Seconds between greetings while a board does not answer: one that is booting loses what
# arrives before its console runs.
HELLO_INTERVAL = 1.0
# The firmware's limits (firmware/pocketpost/users.py).
MAX_USER_NAME = 64
USER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_APOP_SECRET = 256
# Board.set_password_hash: leave the user's APOP secret as it is.
KEEP_APOP = object()

# ---- validation


def check_user_name(name: str) -> str:
    """Returns `name` if the firmware accepts it as a user name; raises ValueError otherwise."""
    if not 0 < len(name) <= MAX_USER_NAME or name[0] == "." or name[-1] == "." or not set(name) <= USER_NAME_CHARS:
        raise ValueError(f"{name!r} is not a user name: 1-{MAX_USER_NAME} of a-z 0-9 . _ -, not starting or ending with '.'")
    return name


def _valid_domain(name: str) -> bool:
    """A DNS name as the firmware's config.valid_domain takes it."""
    if not 0 < len(name) <= 255:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and set(label) <= allowed
        for label in name.split(".")
    )


@dataclass(frozen=True)
class ConfigKey:
    """A configuration key as the firmware's config_schema.SCHEMA defines it."""

    default: object
    kind: str  # int, text, domain, domains, address, user or choice
    applies: str  # "now" or "reboot"
    lo: int = 0  # int: the range; text: hi is the longest value
    hi: int = 0
    secret: bool = False
    choices: tuple = ()  # choice: the words allowed

    def convert(self, text: str):
        """The value to send for `text` typed by a person; raises ValueError saying what is
        allowed."""
        if self.kind == "int":
            if not re.fullmatch(r"[0-9]+", text) or not self.lo <= int(text) <= self.hi:
                raise ValueError(f"must be an integer {self.lo}..{self.hi}")
            return int(text)
        if self.kind == "domains":
            names = [part.strip().lower() for part in text.split(",") if part.strip()]
            if not 0 < len(names) <= 8 or not all(_valid_domain(n) for n in names):
                raise ValueError("must be 1..8 domain names, comma-separated")
            return names
        if self.kind == "domain":
            if not _valid_domain(text.lower()):
                raise ValueError("must be a domain name such as mail.example.org")
            return text.lower()
        if self.kind == "address":
            parts = text.split(".")
            if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
                raise ValueError("must be an IPv4 address such as 0.0.0.0")
            return text
        if self.kind == "choice":
            if text not in self.choices:
                raise ValueError("must be one of " + ", ".join(self.choices))
            return text
        if self.kind == "host":  # a smarthost's name or IPv4 address, or "" (none)
            if text and not _valid_domain(text.lower()):
                raise ValueError("must be a host name such as smtp.example.org, or an IPv4 address")
            return text.lower()
        if self.kind == "email":  # a mail address, or "" (none)
            local, _, domain = text.rpartition("@")
            if text and (not 0 < len(local) <= 64 or not _valid_domain(domain.lower())
                         or any(not " " < c <= "~" or c in "<>" for c in local)):
                raise ValueError("must be a mail address such as me@example.org, or empty")
            return text
        if self.kind == "networks":  # 0-16 IPv4 CIDR blocks; a bare address is a /32
            items = [part.strip() for part in text.split(",") if part.strip()]
            if len(items) > 16:
                raise ValueError("must be 0..16 IPv4 networks such as 192.168.1.0/24, comma-separated")
            out = []
            for item in items:
                address, _, bits = item.partition("/")
                bits = bits or "32"
                parts = address.split(".")
                if (len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts)
                        or not bits.isdigit() or int(bits) > 32):
                    raise ValueError(f"{item} is not an IPv4 network such as 192.168.1.0/24")
                out.append(f"{address}/{int(bits)}")
            return out
        if self.kind == "user":
            try:
                return check_user_name(text)
            except ValueError:
                raise ValueError("must be a user name (a-z 0-9 . _ -)") from None
        if len(text) > self.hi or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError(f"must be text of at most {self.hi} characters, no control characters")
        return text


# The firmware's configuration keys (firmware/pocketpost/config_schema.py SCHEMA; a test keeps the two
# equal).
CONFIG_KEYS = {
    "hostname": ConfigKey("pocketpost", "domain", "reboot"),
    "domains": ConfigKey(["pocketpost.local"], "domains", "now"),
    "postmaster": ConfigKey("postmaster", "user", "now"),
    "bind": ConfigKey("0.0.0.0", "address", "reboot"),
    "pop3_port": ConfigKey(110, "int", "reboot", 0, 65535),
    "smtp_port": ConfigKey(25, "int", "reboot", 0, 65535),
    "pop3s_port": ConfigKey(995, "int", "reboot", 0, 65535),
    "smtps_port": ConfigKey(465, "int", "reboot", 0, 65535),
    "submission_port": ConfigKey(587, "int", "reboot", 0, 65535),
    "require_tls_for_auth": ConfigKey("auto", "choice", "now", choices=("auto", "yes", "no")),
    "tls_max_sessions": ConfigKey(1, "int", "now", 0, 12),
    "tls_handshake_timeout": ConfigKey(30, "int", "now", 5, 300),
    "max_clients": ConfigKey(4, "int", "reboot", 1, 12),
    "max_message_size": ConfigKey(10240000, "int", "now", 1024, 2147483647),
    "max_recipients": ConfigKey(100, "int", "now", 100, 1000),
    "max_bad_commands": ConfigKey(10, "int", "now", 1, 100),
    "pop3_idle_timeout": ConfigKey(600, "int", "now", 10, 86400),
    "smtp_timeout": ConfigKey(300, "int", "now", 10, 86400),
    "auth_fail_delay_ms": ConfigKey(2000, "int", "now", 0, 60000),
    "auth_max_failures": ConfigKey(10, "int", "now", 1, 1000),
    "auth_lockout": ConfigKey(300, "int", "now", 1, 86400),
    "wifi_ssid": ConfigKey("", "text", "reboot", 0, 32),
    "wifi_password": ConfigKey("", "text", "reboot", 0, 64, secret=True),
    "relay_host": ConfigKey("", "host", "now"),
    "relay_port": ConfigKey(587, "int", "now", 1, 65535),
    "relay_security": ConfigKey("starttls", "choice", "now", choices=("starttls", "tls", "plain")),
    "relay_user": ConfigKey("", "text", "now", 0, 255),
    "relay_password": ConfigKey("", "text", "now", 0, 255, secret=True),
    "relay_sender": ConfigKey("", "email", "now"),
    "relay_networks": ConfigKey([], "networks", "now"),
    "relay_queue_messages": ConfigKey(100, "int", "now", 1, 10000),
    "relay_queue_octets": ConfigKey(52428800, "int", "now", 65536, 2147483647),
    "relay_rate": ConfigKey(30, "int", "now", 1, 10000),
    "relay_lifetime": ConfigKey(432000, "int", "now", 60, 2592000),
    "relay_timeout": ConfigKey(300, "int", "now", 5, 3600),
    "relay_time_scale": ConfigKey(1000, "int", "now", 1, 1000),
    "collect_timeout": ConfigKey(120, "int", "now", 5, 3600),
    "collect_time_scale": ConfigKey(1000, "int", "now", 1, 1000),
}


def check_config_key(key: str) -> str:
    """Returns `key` if the firmware knows it; raises ValueError listing the known keys."""
    if key not in CONFIG_KEYS:
        raise ValueError(f"unknown key {key!r}; known: {', '.join(sorted(CONFIG_KEYS))}")
    return key


def convert_config_value(key: str, text: str):
    """The JSON value `config.set` sends for `text`; raises ValueError saying what is allowed."""
    try:
        return CONFIG_KEYS[check_config_key(key)].convert(text)
    except ValueError as e:
        raise ValueError(f"{key} {e}") from None


def check_password(password: str) -> str:
    """Returns `password` if it can be used; raises ValueError otherwise."""
    if not password:
        raise ValueError("the password is empty")
    if any(c in password for c in "\r\n\x00"):
        raise ValueError("the password contains a line end or NUL")
    return password


def check_apop_secret(secret: str) -> str:
    """Returns `secret` if the board takes it as an APOP secret (a usable password of at most
    MAX_APOP_SECRET characters); raises ValueError otherwise."""
    check_password(secret)
    if len(secret) > MAX_APOP_SECRET:
        raise ValueError(f"an APOP secret has at most {MAX_APOP_SECRET} characters; this password has {len(secret)}")
    return secret


# ---- the session


class Board:
    """A provisioning session over a board's console. Opening it checks that the board speaks
    the console protocol, greeting it until it answers or `timeout` seconds passed; every
    request then waits at most `timeout` seconds for its reply."""

    def __init__(self, port, timeout: float = DEFAULT_TIMEOUT, name: str = "the console"):
        self.port = port
        self.name = name  # of the port, for messages
        self.timeout = timeout
        self.recent_lines = []  # the last lines that were not replies, to explain a silent board
        self.client = ConsoleClient(port, timeout=timeout, on_line=self._line)
        hello = self._greet()
        if hello.get("protocol") != PROTOCOL:
            raise PocketpostError(
                f"{self.name} speaks console protocol {hello.get('protocol')}; this pocketpost speaks {PROTOCOL}"
            )
        self.firmware = hello.get("firmware")

    @classmethod
    def open(cls, url: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> "Board":
        """Opens the console at `url` (auto-detected when None) and starts a session."""
        port = open_port(url)
        try:
            return cls(port, timeout, name=port.name or url)
        except BaseException:
            port.close()
            raise

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _greet(self):
        deadline = time.monotonic() + self.timeout
        while True:
            # A fresh line first: whatever someone typed before (a terminal, a REPL) must not
            # prefix the request, or the board would not see "PP> " at a line start.
            self._write(b"\n")
            left = deadline - time.monotonic()
            try:
                return self.request("hello", timeout=min(HELLO_INTERVAL, left))
            except BoardTimeout:
                if left <= HELLO_INTERVAL:
                    raise BoardTimeout(self._silence(f"within {self.timeout:g} s")) from None

    def _silence(self, detail):
        """Why the board did not answer, as far as its other output tells."""
        if any(line.startswith(">>> ") for line in self.recent_lines):
            return (
                f"the board on {self.name} shows the MicroPython REPL: pocketpost is not running "
                "(Ctrl-D at the REPL or `mpremote reset` starts it again)"
            )
        return f"the board on {self.name} is not answering (no reply {detail})"

    def _line(self, text):
        self.recent_lines = (self.recent_lines + [text])[-20:]

    def _write(self, data):
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as e:
            raise PortError(f"{self.name}: {e}") from None

    def request(self, command: str, args: dict | None = None, timeout: float | None = None):
        """Sends one console request and returns its reply; raises BoardError with the board's
        message, BoardTimeout when it does not answer, PortError when the port fails."""
        try:
            return self.client.request(command, args, timeout)
        except BoardTimeout:
            wait = self.timeout if timeout is None else timeout
            raise BoardTimeout(self._silence(f"to {command} within {wait:g} s")) from None
        except (serial.SerialException, OSError) as e:
            raise PortError(f"{self.name}: {e}") from None

    # ---- users

    def add_user(self, name: str, password: str, apop: bool = False, iterations: int = DEFAULT_ITERATIONS):
        """Creates user `name`; the password is hashed here. With `apop` the password also goes
        to the board in clear text as the user's APOP secret (APOP needs the secret)."""
        args = {"name": check_user_name(name), "hash": hash_password(check_password(password), iterations)}
        if apop:
            args["apop"] = check_apop_secret(password)
        return self.request("user.add", args)

    def list_users(self) -> list[dict]:
        """The users, by name: [{"name", "apop", "messages"}]."""
        return sorted(self.request("user.list")["users"], key=lambda user: user["name"])

    def delete_user(self, name: str, purge: bool = False):
        """Deletes user `name`; with `purge` its mailbox too."""
        return self.request("user.del", {"name": check_user_name(name), "purge": purge})

    def change_password(self, name: str, password: str, iterations: int = DEFAULT_ITERATIONS) -> bool:
        """Sets a new password for `name`. A user with an APOP secret gets the new password as
        its secret too (the old secret would otherwise still log in); returns whether it did."""
        check_user_name(name)
        check_password(password)
        has_apop = any(u["name"] == name and u["apop"] for u in self.list_users())
        args = {"name": name, "hash": hash_password(password, iterations)}
        if has_apop:
            args["apop"] = check_apop_secret(password)
        self.request("user.passwd", args)  # the board answers NOTFOUND for an unknown user
        return has_apop

    def add_user_hash(self, name: str, password_hash: str, apop_secret: str | None = None):
        """Creates user `name` with a hash made beforehand (passwords.hash_password, `pocketpost
        hash-password`); `apop_secret` is sent in clear text as the user's APOP secret."""
        args = {"name": check_user_name(name), "hash": check_hash(password_hash)}
        if apop_secret is not None:
            args["apop"] = check_apop_secret(apop_secret)
        return self.request("user.add", args)

    def set_password_hash(self, name: str, password_hash: str, apop_secret=KEEP_APOP):
        """Sets the password hash of `name`. `apop_secret`: a new APOP secret (sent in clear
        text), None to remove the user's secret, KEEP_APOP to leave it as it is."""
        args = {"name": check_user_name(name), "hash": check_hash(password_hash)}
        if apop_secret is not KEEP_APOP:
            args["apop"] = None if apop_secret is None else check_apop_secret(apop_secret)
        return self.request("user.passwd", args)

    def password_matches(self, name: str, password: str | None = None, password_hash: str | None = None):
        """Whether user `name`'s password on the board is `password` (hashed here with the
        board's salt), or its stored hash is `password_hash`; None when the firmware cannot
        tell (before `user.check`). The board never reveals its hash, only salt and iterations."""
        try:
            if password_hash is None:
                params = self.request("user.check", {"name": check_user_name(name)})
                password_hash = hash_password(password, params["iterations"], bytes.fromhex(params["salt"]))
            return self.request("user.check", {"name": check_user_name(name), "hash": password_hash})["same"]
        except BoardError as e:
            if e.code == "UNKNOWN":
                return None
            raise

    # ---- configuration and status

    def get_config(self, key: str | None = None) -> dict:
        """All settings ({"config", "overridden"}) or one ({"key", "value", "overridden"})."""
        if key is None:
            return self.request("config.get")
        return self.request("config.get", {"key": check_config_key(key)})

    def set_config(self, key: str, value) -> dict:
        """Sets `key` to `value`, given as text (converted and checked here as the firmware
        would) or as its JSON value; returns {"key", "value", "applies", "overridden"}."""
        if isinstance(value, str):
            value = convert_config_value(key, value)
        return self.request("config.set", {"key": check_config_key(key), "value": value})

    def info(self) -> dict:
        """The board's status: firmware, uptime, heap, network, storage."""
        return self.request("info")

    def log_tail(self, n: int = 20) -> list[str]:
        """The board's last `n` log lines, oldest first."""
        return self.request("log.tail", {"n": n})["lines"]

    def follow_logs(self, n: int, emit):
        """Calls `emit` with the last `n` log lines, then with every line the board prints
        (logs, tracebacks, the REPL), until interrupted (KeyboardInterrupt) or the port fails."""
        # Lines the board prints before the tail's reply are in the tail; those after it are new.
        for line in self.log_tail(n):
            emit(line)
        while True:
            try:
                line = self.client.read_line(time.monotonic() + 1.0)
            except (serial.SerialException, OSError) as e:
                raise PortError(f"{self.name}: {e}") from None
            if line is not None and not line.startswith(REPLY_PREFIX):
                emit(line)

    def reboot(self):
        """Asks the board to shut its servers down cleanly and restart."""
        return self.request("reboot")
