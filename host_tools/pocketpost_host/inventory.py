"""Inventory files: the boards of a fleet and the state each should be in (docs/inventory.md).

The YAML is read with the line of every value kept, so that each error names its line; all
errors are collected and reported together, before any board is contacted. Secrets are never
clear text in the file: user passwords are `password_hash` values (`pocketpost hash-password`)
or references (`{env: VAR}`, `{file: PATH}`) resolved only for the boards being applied; so is
a TLS key. A TLS certificate (not a secret) is a path; it is read with its key, and the two
checked to belong together, when the secrets are resolved.

The same checks serve the Ansible module (ansible_collections/pocketpost/appliance), whose
parameters come without lines and may carry passwords Ansible keeps secret (vault, no_log).
"""

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from . import tls as certificates
from .errors import PocketpostError
from .firmware import boards_dir
from .passwords import check_hash
from .provision import CONFIG_KEYS, check_apop_secret, check_password, check_user_name

# The config keys under `limits:` and `listen:` (the rest have keys of their own).
LIMIT_KEYS = (
    "max_clients", "max_message_size", "max_recipients", "max_bad_commands", "pop3_idle_timeout",
    "smtp_timeout", "auth_fail_delay_ms", "auth_max_failures", "auth_lockout",
)
LISTEN_KEYS = ("bind", "pop3_port", "smtp_port")
# `tls:` holds the certificate and key, and these config keys under shorter names.
TLS_CONFIG = {
    "require_for_auth": "require_tls_for_auth",
    "max_sessions": "tls_max_sessions",
    "handshake_timeout": "tls_handshake_timeout",
    "pop3s_port": "pop3s_port",
    "smtps_port": "smtps_port",
    "submission_port": "submission_port",
}
TLS_KEYS = ("cert", "key") + tuple(TLS_CONFIG)
# `relay:` holds the smarthost's password and CA certificates, and these config keys.
RELAY_CONFIG = {
    "host": "relay_host",
    "port": "relay_port",
    "security": "relay_security",
    "user": "relay_user",
    "sender": "relay_sender",
    "networks": "relay_networks",
    "queue_messages": "relay_queue_messages",
    "queue_octets": "relay_queue_octets",
    "rate": "relay_rate",
    "lifetime": "relay_lifetime",
    "timeout": "relay_timeout",
}
RELAY_KEYS = ("password", "update_password", "ca") + tuple(RELAY_CONFIG)
# `collect:` lists collector accounts (the board polls each user's provider mailbox): one is
# known by its user, host and login; its password is a secret.
COLLECT_KEYS = ("user", "host", "login", "password", "update_password", "state", "port", "security",
                "interval", "keep", "delete_after", "max_size")
COLLECT_SECURITY = ("tls", "stls", "plain")
# When a password already on the board is set again (as Ansible's user module).
UPDATE_PASSWORD = ("on_create", "always")
USER_STATES = ("present", "absent")
# The board type whose console `sim: DIR` reaches (pocketpost sim --data DIR).
SIM_BOARD = "unix"

STATE_KEYS = (
    "hostname", "domains", "postmaster", "listen", "limits", "wifi", "users", "users_exclusive",
    "purge", "tls", "relay", "collect",
)
BOARD_KEYS = ("board", "port", "sim", "host", "groups", "timeout") + STATE_KEYS
TOP_KEYS = ("defaults", "groups", "boards")
USER_KEYS = ("name", "password_hash", "password", "apop", "update_password", "state", "purge")
WIFI_KEYS = ("ssid", "password", "update_password")
SECRET_KINDS = ("env", "file")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

CLEAR_PASSWORD = (
    "clear-text passwords are not allowed in an inventory: give password_hash (made by "
    "`pocketpost hash-password`), or password: {env: VARIABLE} or {file: PATH}"
)
CLEAR_RELAY_PASSWORD = (
    "the smarthost's password is a secret, never in an inventory itself: give {env: VARIABLE} "
    "or {file: PATH}"
)
CLEAR_COLLECT_PASSWORD = (
    "a collector account's password is a secret, never in an inventory itself: give "
    "{env: VARIABLE} or {file: PATH}"
)
CLEAR_KEY = (
    "a TLS key is a secret, never in an inventory itself: give {file: PATH} (a PEM or DER file, "
    "relative to the inventory) or {env: VARIABLE} (holding the PEM)"
)


class InventoryError(PocketpostError):
    """The inventory (or a module's parameters) is not valid: every error, one a line."""

    exit_code = 2

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ---- YAML with lines


class LineDict(dict):
    """A YAML mapping that knows the line of each of its keys."""

    line = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.lines = {}


class LineList(list):
    """A YAML sequence that knows the line of each of its items."""

    line = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.lines = []


class _Loader(yaml.SafeLoader):
    """The safe loader, with lines kept and duplicate keys reported instead of overwritten."""

    def __init__(self, stream):
        super().__init__(stream)
        self.problems = []  # (line, message)


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            loader.problems.append((line, f"a key must be text, not {_kind(key)} {key!r}"))
            continue
        if key in result:
            loader.problems.append((line, f"{key!r} is given twice (first on line {result.lines[key]})"))
            continue
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line  # errors about a value name the line of its key
    return result


def _construct_sequence(loader, node):
    result = LineList()
    result.line = node.start_mark.line + 1
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(item.start_mark.line + 1)
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _kind(value):
    """What a value is, for messages."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ---- where an error is


class Where:
    """A place in the inventory: its file (None for module parameters), line and key path.
    Errors found there go to the shared list `errors`."""

    def __init__(self, errors, source=None, line=None, path=""):
        self.errors = errors
        self.source = source
        self.line = line
        self.path = path

    def at(self, key, container=None):
        """The place of `container[key]` (a mapping key or a list index)."""
        line = self.line
        lines = getattr(container, "lines", None)
        if isinstance(lines, dict) and key in lines:
            line = lines[key]
        elif isinstance(lines, list) and isinstance(key, int) and key < len(lines):
            line = lines[key]
        path = f"{self.path}[{key}]" if isinstance(key, int) else (f"{self.path}.{key}" if self.path else key)
        return Where(self.errors, self.source, line, path)

    def error(self, message):
        where = self.path or "inventory"
        if self.source is not None:
            where = f"{self.source}:{self.line or 1}: {where}"
        self.errors.append(f"{where}: {message}")


class _Bad(ValueError):
    """A value refused; its message says what is allowed."""


# ---- the parts


@dataclass(frozen=True)
class Secret:
    """A secret named in the inventory: an environment variable, a file (relative to the
    inventory's folder) or, from Ansible only, the value itself."""

    kind: str  # env, file or value
    ref: str
    where: Where = field(compare=False, repr=False)

    def describe(self):
        """Where the secret comes from, to start a message with ("" for a value)."""
        return {"env": f"environment variable {self.ref}: ", "file": f"file {self.ref}: "}.get(self.kind, "")


@dataclass(frozen=True)
class UserSpec:
    """A user as the inventory wants it. Before resolve(), the password fields may be Secrets;
    after, they are text or None."""

    name: str
    state: str = "present"
    password_hash: object = field(default=None, repr=False)  # never in a repr or traceback
    password: object = field(default=None, repr=False)
    apop: bool = False
    update_password: str = "on_create"
    purge: bool | None = None  # None: the board's `purge`


@dataclass(frozen=True)
class TlsFiles:
    """The certificate and key the inventory names (Secrets: a certificate is no secret, but it
    is a reference read with the key)."""

    cert: Secret
    key: Secret


@dataclass(frozen=True)
class Certificate:
    """A certificate and its key, read and checked to belong together (resolve()): what
    `tls.install` sends, and what `tls.show` will report once it is installed."""

    cert_der: bytes = field(repr=False)
    key_der: bytes = field(repr=False)  # never in a repr or traceback
    shown: dict = field(default_factory=dict)  # tls.describe(): subject, ..., sha256

    @property
    def fingerprint(self):
        return self.shown["sha256"]


@dataclass(frozen=True)
class RelayCa:
    """The CA certificates the relay should trust (`relay.ca`): before resolve(), `files` (Secrets
    of kind file); after, `ders` (each certificate in DER, in order) and `shown` (what the board's
    relay.ca.show will report of each)."""

    files: tuple = ()
    ders: tuple = field(default=(), repr=False)
    shown: tuple = ()

    @property
    def fingerprints(self):
        return [c["sha256"] for c in self.shown]


@dataclass(frozen=True)
class CollectSpec:
    """A collector account as the inventory wants it (`collect:`); `password` a Secret before
    resolve(), text after. port None: the security's default (995 with tls, else 110)."""

    user: str
    host: str
    login: str
    password: object = field(default=None, repr=False)  # never in a repr or traceback
    update_password: str = "on_create"
    state: str = "present"
    port: int | None = None
    security: str = "tls"
    interval: int = 30
    keep: bool = True
    delete_after: int = 0
    max_size: int = 0

    @property
    def key(self):
        return (self.user, self.host, self.login)


@dataclass(frozen=True)
class BoardSpec:
    """One board and the state it should be in."""

    name: str
    board_type: str | None  # None: not checked (the Ansible module without `board`)
    port: str
    host: str | None = None
    timeout: float | None = None
    config: dict = field(default_factory=dict)  # config key -> value, as config.set takes it
    # None: not managed; "" none; else a Secret (text once resolved)
    wifi_password: object = field(default=None, repr=False)
    wifi_update_password: str = "on_create"
    users: dict = field(default_factory=dict)  # name -> UserSpec, in inventory order
    users_exclusive: bool = False
    purge: bool = False
    line: int | None = None
    # None: not managed; a TlsFiles, then (resolve) a Certificate
    tls: object = field(default=None, repr=False)
    # None: not managed; "" none; else a Secret (text once resolved)
    relay_password: object = field(default=None, repr=False)
    relay_update_password: str = "on_create"
    relay_ca: object = None  # None: not managed; a RelayCa
    collect: dict = field(default_factory=dict)  # (user, host, login) -> CollectSpec


# ---- checks of single values


def _text(value, what="text"):
    if not isinstance(value, str):
        raise _Bad(f"must be {what}, not {_kind(value)}")
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, not {_kind(value)}")
    return value


def _choice(value, choices):
    if value not in choices:
        raise _Bad(f"must be one of {', '.join(choices)}, not {value!r}")
    return value


def _name(value, what):
    _text(value, f"a {what} name")
    if not NAME_PATTERN.fullmatch(value):
        raise _Bad(f"{value!r} is not a {what} name: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


def config_value(key, value):
    """`value` as config.set takes it for `key`, checked as the firmware checks it."""
    spec = CONFIG_KEYS[key]
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not spec.lo <= value <= spec.hi:
            raise _Bad(f"must be an integer {spec.lo}..{spec.hi}, not {value!r}")
        return value
    if spec.kind in ("domains", "networks"):
        what = "domain names" if spec.kind == "domains" else "IPv4 networks"
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise _Bad(f"must be a list of {what}")
            value = ",".join(value)
        _text(value, f"a list of {what}")
    else:
        _text(value)
    try:
        return spec.convert(value)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _check(where, check, value):
    """check(value), or None after recording its error at `where`."""
    try:
        return check(value)
    except _Bad as e:
        where.error(str(e))
        return None


def _mapping(where, value, keys, what):
    """`value` if it is a mapping of known keys (an empty one for nothing); records errors."""
    if value is None:
        return LineDict()
    if not isinstance(value, dict):
        where.error(f"must be a mapping ({what}), not {_kind(value)}")
        return None
    for key in value:
        if key not in keys:
            where.at(key, value).error(f"unknown key; known: {', '.join(keys)}")
    return value


def _secret(where, value, allow_clear):
    """A Secret from `{env: VAR}`, `{file: PATH}` or (allow_clear) text; None after an error."""
    if isinstance(value, str):
        if allow_clear:
            return Secret("value", value, where)
        where.error(CLEAR_PASSWORD)
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in SECRET_KINDS:
        where.error("must be {env: VARIABLE} or {file: PATH}")
        return None
    kind, ref = next(iter(value.items()))
    inner = where.at(kind, value)
    if not isinstance(ref, str) or not ref:
        what = "a variable name" if kind == "env" else "a path"
        inner.error(f"must be {what}, not {_kind(ref) if ref != '' else 'empty text'}")
        return None
    return Secret(kind, ref, inner)


# ---- the state of a board, a group or the defaults


def _parse_users(where, value, allow_clear):
    if not isinstance(value, list):
        where.error(f"must be a list of users, not {_kind(value)}")
        return None
    users = {}
    for i, entry in enumerate(value):
        at = where.at(i, value)
        entry = _mapping(at, entry, USER_KEYS, "a user: name, password_hash or password, ...")
        if entry is None:
            continue
        if "name" not in entry:
            at.error("a user needs a name")
            continue
        name = _check(at.at("name", entry), _user_name, entry["name"])
        if name is None:
            continue
        if name in users:
            at.at("name", entry).error(f"user {name} is listed twice")
            continue
        fields = {}
        for key, check in (
            ("state", lambda v: _choice(v, USER_STATES)),
            ("apop", _bool),
            ("update_password", lambda v: _choice(v, UPDATE_PASSWORD)),
            ("purge", _bool),
        ):
            if key in entry:
                fields[key] = _check(at.at(key, entry), check, entry[key])
        if "password_hash" in entry:
            hw = at.at("password_hash", entry)
            raw = entry["password_hash"]
            if isinstance(raw, str):
                checked = _check(hw, _hash, raw)
                fields["password_hash"] = None if checked is None else Secret("value", checked, hw)
            else:
                fields["password_hash"] = _secret(hw, raw, False)
        if "password" in entry:
            fields["password"] = _secret(at.at("password", entry), entry["password"], allow_clear)
        user = UserSpec(name, **{k: v for k, v in fields.items() if v is not None})
        bad_state = "state" in entry and fields.get("state") is None  # its error says enough
        if user.state == "present" and not bad_state:
            if "password_hash" in entry and "password" in entry:
                at.error("give password_hash or password, not both")
            elif "password_hash" not in entry and "password" not in entry:
                at.error(
                    "a user needs password_hash (pocketpost hash-password) or password: "
                    "{env: VARIABLE} or {file: PATH}"
                )
            elif user.apop and "password" not in entry:
                at.at("apop", entry).error(
                    "APOP needs the password itself (the board keeps it as the APOP secret): "
                    "give password: {env: VARIABLE} or {file: PATH} instead of password_hash"
                )
        users[name] = user
    return users


def _user_name(value):
    _text(value, "a user name")
    try:
        return check_user_name(value)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _hash(value):
    try:
        return check_hash(value)
    except ValueError as e:
        raise _Bad(str(e)) from None


def parse_state(where, mapping, allow_clear=False):
    """The desired state a mapping (defaults, a group or a board) gives, as a dict of the parts
    it sets: config, wifi_password, wifi_update_password, users, users_exclusive, purge."""
    state = {"config": {}}
    config = state["config"]

    def set_config(at, key, value):
        checked = _check(at, lambda v: config_value(key, v), value)
        if checked is not None:
            config[key] = checked

    for key in ("hostname", "postmaster", "domains"):
        if key in mapping:
            set_config(where.at(key, mapping), key, mapping[key])
    for section, keys in (("listen", LISTEN_KEYS), ("limits", LIMIT_KEYS)):
        if section in mapping:
            at = where.at(section, mapping)
            sub = _mapping(at, mapping[section], keys, ", ".join(keys))
            for key in keys:
                if sub is not None and key in sub:
                    set_config(at.at(key, sub), key, sub[key])
    if "wifi" in mapping:
        at = where.at("wifi", mapping)
        wifi = _mapping(at, mapping["wifi"], WIFI_KEYS, "ssid, password, update_password")
        if wifi is not None:
            if "ssid" in wifi:
                set_config(at.at("ssid", wifi), "wifi_ssid", wifi["ssid"])
            if "password" in wifi:
                pw = at.at("password", wifi)
                if wifi["password"] == "":
                    state["wifi_password"] = ""  # an open network: nothing secret
                else:
                    secret = _secret(pw, wifi["password"], allow_clear)
                    if secret is not None:
                        state["wifi_password"] = secret
            if "update_password" in wifi:
                choice = _check(at.at("update_password", wifi), lambda v: _choice(v, UPDATE_PASSWORD),
                                wifi["update_password"])
                if choice is not None:
                    state["wifi_update_password"] = choice
    if "users" in mapping:
        users = _parse_users(where.at("users", mapping), mapping["users"], allow_clear)
        if users is not None:
            state["users"] = users
    for key in ("users_exclusive", "purge"):
        if key in mapping:
            value = _check(where.at(key, mapping), _bool, mapping[key])
            if value is not None:
                state[key] = value
    if "tls" in mapping:
        at = where.at("tls", mapping)
        tls = _mapping(at, mapping["tls"], TLS_KEYS, ", ".join(TLS_KEYS))
        if tls is not None:
            for key, config_key in TLS_CONFIG.items():
                if key in tls:
                    value = tls[key]
                    if key == "require_for_auth" and isinstance(value, bool):
                        value = "yes" if value else "no"  # YAML 1.1 reads yes and no as booleans
                    set_config(at.at(key, tls), config_key, value)
            if ("cert" in tls) != ("key" in tls):
                at.error("give `cert` and `key` together (the key must belong to the certificate)")
            elif "cert" in tls:
                cert = _cert_ref(at.at("cert", tls), tls["cert"])
                key = _key_ref(at.at("key", tls), tls["key"], allow_clear)
                if cert is not None and key is not None:
                    state["tls"] = TlsFiles(cert, key)
    if "relay" in mapping:
        _parse_relay(where.at("relay", mapping), mapping["relay"], state, set_config, allow_clear)
    if "collect" in mapping:
        accounts = _parse_collect(where.at("collect", mapping), mapping["collect"], allow_clear)
        if accounts is not None:
            state["collect"] = accounts
    return state


def _int_range(lo, hi):
    def check(value):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _Bad(f"must be an integer {lo}..{hi}, not {_kind(value) if not isinstance(value, int) else value}")
        return value

    return check


def _collect_text(value, spaces=False):
    _text(value)
    if not 0 < len(value) <= 255 or any(ord(c) < (32 if spaces else 33) or ord(c) == 127 for c in value):
        raise _Bad("must be 1..255 characters, no control characters" + ("" if spaces else " or spaces"))
    return value


def _collect_host(value):
    return config_value("relay_host", value) if value else _collect_text(value)


def _parse_collect(where, value, allow_clear):
    """`collect:`: collector accounts, each {user, host, login, password (a secret), ...}."""
    if not isinstance(value, list):
        where.error(f"must be a list of collector accounts, not {_kind(value)}")
        return None
    accounts = {}
    for i, entry in enumerate(value):
        at = where.at(i, value)
        entry = _mapping(at, entry, COLLECT_KEYS, ", ".join(COLLECT_KEYS))
        if entry is None:
            continue
        missing = [k for k in ("user", "host", "login") if k not in entry]
        if missing:
            at.error("a collector account needs " + ", ".join(missing))
            continue
        user = _check(at.at("user", entry), _user_name, entry["user"])
        host = _check(at.at("host", entry), _collect_host, entry["host"])
        login = _check(at.at("login", entry), _collect_text, entry["login"])
        if None in (user, host, login):
            continue
        fields = {}
        for key, check in (
            ("state", lambda v: _choice(v, USER_STATES)),
            ("update_password", lambda v: _choice(v, UPDATE_PASSWORD)),
            ("port", _int_range(1, 65535)),
            ("security", lambda v: _choice(v, COLLECT_SECURITY)),
            ("interval", _int_range(5, 1440)),
            ("keep", _bool),
            ("delete_after", _int_range(0, 3650)),
            ("max_size", _int_range(0, 2147483647)),
        ):
            if key in entry:
                fields[key] = _check(at.at(key, entry), check, entry[key])
        if "password" in entry:
            pw = at.at("password", entry)
            if isinstance(entry["password"], str) and not allow_clear:
                pw.error(CLEAR_COLLECT_PASSWORD)
            else:
                fields["password"] = _secret(pw, entry["password"], allow_clear)
        account = CollectSpec(user, host, login, **{k: v for k, v in fields.items() if v is not None})
        if account.key in accounts:
            at.error(f"collector account {login}@{host} of {user} is listed twice")
            continue
        if account.state == "present" and "password" not in entry:
            at.error("a collector account needs password: {env: VARIABLE} or {file: PATH}")
        accounts[account.key] = account
    return accounts


def _parse_relay(at, value, state, set_config, allow_clear):
    """`relay:`: the smarthost's settings (config keys), its password (a secret) and the CA
    certificates to install."""
    relay = _mapping(at, value, RELAY_KEYS, ", ".join(RELAY_KEYS))
    if relay is None:
        return
    for key, config_key in RELAY_CONFIG.items():
        if key in relay:
            set_config(at.at(key, relay), config_key, relay[key])
    if "password" in relay:
        pw = at.at("password", relay)
        if relay["password"] == "":
            state["relay_password"] = ""  # no password (a LAN smarthost without AUTH)
        elif isinstance(relay["password"], str) and not allow_clear:
            pw.error(CLEAR_RELAY_PASSWORD)
        else:
            secret = _secret(pw, relay["password"], allow_clear)
            if secret is not None:
                state["relay_password"] = secret
    if "update_password" in relay:
        choice = _check(at.at("update_password", relay), lambda v: _choice(v, UPDATE_PASSWORD), relay["update_password"])
        if choice is not None:
            state["relay_update_password"] = choice
    if "ca" in relay:
        cat = at.at("ca", relay)
        listed = relay["ca"] if isinstance(relay["ca"], list) else [relay["ca"]]
        files = []
        for i, item in enumerate(listed):
            where = cat.at(i, relay["ca"]) if isinstance(relay["ca"], list) else cat
            if isinstance(item, str) and item:
                files.append(Secret("file", item, where))
            elif isinstance(item, dict) and list(item) == ["file"]:
                secret = _secret(where, item, False)
                if secret is not None:
                    files.append(secret)
            else:
                where.error("must be the path of a PEM file of CA certificates (or a list of them), as PATH or {file: PATH}")
        if not listed:
            cat.error("must name at least one PEM file of CA certificates (the board keeps 1 to 8)")
        elif len(files) == len(listed):
            state["relay_ca"] = RelayCa(tuple(files))


def _cert_ref(where, value):
    """The certificate's file, from `PATH` or `{file: PATH}`; None after an error."""
    if isinstance(value, str) and value:
        return Secret("file", value, where)
    if isinstance(value, dict) and list(value) == ["file"]:
        return _secret(where, value, False)
    where.error("must be the certificate's path (PEM or DER), as PATH or {file: PATH}")
    return None


def _key_ref(where, value, allow_clear):
    """The key, from `{file: PATH}` or `{env: VARIABLE}` (or, from Ansible, the PEM itself)."""
    if isinstance(value, str) and not allow_clear:
        where.error(CLEAR_KEY)
        return None
    return _secret(where, value, allow_clear)


def merge_states(states):
    """The state of a board from its parts, most general first: mappings merge key by key,
    users by name (a later entry replaces an earlier one whole), everything else is replaced."""
    merged = {"config": {}, "users": {}, "collect": {}}
    for state in states:
        for key, value in state.items():
            if key in ("config", "users", "collect"):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


def known_boards():
    """The board types with a definition (boards/NAME/board.json)."""
    root = boards_dir()
    return sorted(p.parent.name for p in root.glob("*/board.json")) if root.is_dir() else []


def _board_spec(name, merged, **fields):
    return BoardSpec(
        name=name,
        config=merged["config"],
        wifi_password=merged.get("wifi_password"),
        wifi_update_password=merged.get("wifi_update_password", "on_create"),
        users=merged["users"],
        users_exclusive=merged.get("users_exclusive", False),
        purge=merged.get("purge", False),
        tls=merged.get("tls"),
        relay_password=merged.get("relay_password"),
        relay_update_password=merged.get("relay_update_password", "on_create"),
        relay_ca=merged.get("relay_ca"),
        collect=merged.get("collect", {}),
        **fields,
    )


def _connection(where, entry, base_dir, require_type=True):
    """(board type, port, host, timeout) of a board entry; records errors."""
    board_type = None
    if "board" in entry:
        board_type = _check(where.at("board", entry), lambda v: _board_type(v), entry["board"])
    elif require_type:
        where.error(f"a board needs `board:`, its type ({', '.join(known_boards())})")
    port = None
    if ("port" in entry) == ("sim" in entry):
        where.error("a board needs either `port:` (its serial console) or `sim:` (a pocketpost sim data folder)")
    elif "port" in entry:
        port = _check(where.at("port", entry), lambda v: _text(v, "a serial device or pyserial URL"), entry["port"])
    else:
        at = where.at("sim", entry)
        folder = _check(at, lambda v: _text(v, "a folder"), entry["sim"])
        if folder is not None:
            if board_type is not None and board_type != SIM_BOARD:
                at.error(f"`sim:` is for the emulated board (board: {SIM_BOARD}), not {board_type}")
            port = str((Path(base_dir) / folder / "console") if base_dir is not None else Path(folder) / "console")
    host = None
    if "host" in entry:
        host = _check(where.at("host", entry), _host, entry["host"])
    timeout = None
    if "timeout" in entry:
        timeout = _check(where.at("timeout", entry), _timeout, entry["timeout"])
    return board_type, port, host, timeout


def _board_type(value):
    _text(value, "a board type")
    known = known_boards()
    if value not in known:
        raise _Bad(f"unknown board type {value!r}; known: {', '.join(known)}")
    return value


def _host(value):
    _text(value, "a host name or address")
    if not value or any(c.isspace() for c in value):
        raise _Bad(f"{value!r} is not a host name or address")
    return value


def _timeout(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 600:
        raise _Bad(f"must be seconds, 0.1..600, not {value!r}")
    return float(value)


# ---- the inventory


@dataclass
class Inventory:
    """The boards of an inventory file (secrets not resolved yet) and its groups."""

    source: str
    base_dir: Path
    boards: dict  # name -> BoardSpec
    groups: dict  # name -> [board names]

    def select(self, limit=None):
        """The boards named by `limit` (names of boards or groups; all when empty), in inventory
        order; raises InventoryError for a name that is neither."""
        if not limit:
            return list(self.boards.values())
        wanted, unknown = set(), []
        for name in limit:
            if name in self.boards:
                wanted.add(name)
            elif name in self.groups:
                wanted.update(self.groups[name])
            else:
                unknown.append(name)
        if unknown:
            raise InventoryError(
                [f"--limit: no board or group {n!r} in {self.source} (boards: {', '.join(self.boards)})" for n in unknown]
            )
        return [spec for name, spec in self.boards.items() if name in wanted]


def load(path) -> Inventory:
    """Reads and checks an inventory file; raises InventoryError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InventoryError([f"{path}: cannot read the inventory: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise InventoryError([f"{path}: the inventory is not UTF-8 text"]) from None
    return loads(text, str(path), path.parent)


def loads(text, source="inventory", base_dir=".") -> Inventory:
    """Checks the inventory in `text`; `source` names it in errors, `base_dir` is where relative
    paths (sim folders, secret files) start."""
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise InventoryError([f"{source}:{line}: not valid YAML: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise InventoryError([f"{source}: not valid YAML: {e}"]) from None
    finally:
        loader.dispose()
    errors = [f"{source}:{line}: {message}" for line, message in loader.problems]
    root = Where(errors, source, 1)
    if not isinstance(document, dict):
        root.error(f"an inventory is a mapping with `boards:` (and `defaults:`, `groups:`), not {_kind(document)}")
        raise InventoryError(errors)
    root.line = document.line
    _mapping(root, document, TOP_KEYS, "defaults, groups, boards")

    defaults = {"config": {}}
    if "defaults" in document:
        at = root.at("defaults", document)
        mapping = _mapping(at, document["defaults"], STATE_KEYS, "the state of every board")
        if mapping is not None:
            defaults = parse_state(at, mapping)

    group_states = {}
    if "groups" in document:
        at = root.at("groups", document)
        groups = document["groups"] if document["groups"] is not None else {}
        if not isinstance(groups, dict):
            at.error(f"must be a mapping of group names to states, not {_kind(groups)}")
            groups = {}
        for name, value in groups.items():
            gat = at.at(name, groups)
            if _check(gat, lambda v: _name(v, "group"), name) is None:
                continue
            mapping = _mapping(gat, value, STATE_KEYS, "the state of the group's boards")
            if mapping is not None:
                group_states[name] = parse_state(gat, mapping)

    boards, members = {}, {name: [] for name in group_states}
    if "boards" not in document:
        root.error("an inventory needs `boards:`, a mapping of board names to boards")
    else:
        at = root.at("boards", document)
        entries = document["boards"]
        if not isinstance(entries, dict) or not entries:
            at.error(f"must be a mapping of board names to boards, not {_kind(entries) if entries != {} else 'empty'}")
            entries = {}
        for name, entry in entries.items():
            bat = at.at(name, entries)
            if _check(bat, lambda v: _name(v, "board"), name) is None:
                continue
            if name in group_states:
                bat.error(f"{name!r} names a group too; board and group names must differ")
            entry = _mapping(bat, entry, BOARD_KEYS, "board, port or sim, host, groups, and the board's state")
            if entry is None:
                continue
            parts = [defaults]
            if "groups" in entry:
                gat = bat.at("groups", entry)
                listed = entry["groups"]
                if not isinstance(listed, list):
                    gat.error(f"must be a list of group names, not {_kind(listed)}")
                    listed = []
                for i, group in enumerate(listed):
                    if group not in group_states:
                        known = ", ".join(group_states) or "none defined"
                        gat.at(i, listed).error(f"no group {group!r} (groups: {known})")
                    else:
                        parts.append(group_states[group])
                        members[group].append(name)
            parts.append(parse_state(bat, entry))
            board_type, port, host, timeout = _connection(bat, entry, base_dir)
            boards[name] = _board_spec(
                name, merge_states(parts), board_type=board_type, port=port, host=host, timeout=timeout,
                line=bat.line,
            )
    if errors:
        raise InventoryError(sorted(errors, key=lambda e: _line_of(e, source)))
    return Inventory(source, Path(base_dir), boards, members)


def _line_of(error, source):
    """The line an error of `source` names (for sorting them)."""
    match = re.match(re.escape(source) + r":(\d+):", error)
    return int(match.group(1)) if match else 0


# ---- secrets


def _read_secret(secret, base_dir, environ):
    """The text of `secret`; raises _Bad saying why it cannot be had."""
    if secret.kind == "value":
        return secret.ref
    if secret.kind == "env":
        value = environ.get(secret.ref)
        if value is None:
            raise _Bad(f"the environment variable {secret.ref} is not set")
        return value
    path = Path(base_dir) / secret.ref
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _Bad(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise _Bad(f"{path} is not UTF-8 text") from None
    # One line: the line end an editor adds is not part of the secret.
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    return text


def resolve(spec: BoardSpec, base_dir=".", environ=None) -> BoardSpec:
    """`spec` with its secrets read (environment variables, files) and checked; raises
    InventoryError naming each one that cannot be had."""
    environ = os.environ if environ is None else environ
    errors = []

    def get(secret, check):
        if not isinstance(secret, Secret):
            return secret
        try:
            return check(_read_secret(secret, base_dir, environ))
        except (_Bad, ValueError) as e:
            Where(errors, secret.where.source, secret.where.line, secret.where.path).error(f"{secret.describe()}{e}")
            return None

    def wifi_check(text):
        return config_value("wifi_password", text)

    users = {}
    for name, user in spec.users.items():
        users[name] = replace(
            user,
            password_hash=get(user.password_hash, check_hash),
            password=get(user.password, check_apop_secret if user.apop else check_password),
        )
    tls = spec.tls
    if isinstance(tls, TlsFiles):
        tls = _read_certificate(tls, base_dir, environ, errors)
    relay_password = get(spec.relay_password, lambda text: config_value("relay_password", text))
    relay_ca = spec.relay_ca
    if isinstance(relay_ca, RelayCa) and relay_ca.files:
        relay_ca = _read_relay_ca(relay_ca, base_dir, errors)
    collect = {key: replace(account, password=get(account.password, lambda text: _collect_text(text.rstrip("\r\n"), True)))
               for key, account in spec.collect.items()}
    resolved = replace(
        spec, users=users, wifi_password=get(spec.wifi_password, wifi_check), tls=tls,
        relay_password=relay_password, relay_ca=relay_ca, collect=collect,
    )
    if errors:
        raise InventoryError(errors)
    return resolved


def _read_bytes(secret, base_dir, environ):
    """The contents of a certificate or key reference, as bytes (a DER file is binary)."""
    if secret.kind == "file":
        path = Path(base_dir) / secret.ref
        try:
            return path.read_bytes()
        except OSError as e:
            raise _Bad(f"cannot read {path}: {e.strerror}") from None
    if secret.kind == "value" and "-----BEGIN" not in secret.ref:
        # Only the PEM text itself is checked, never shown: it may be a key.
        raise _Bad("must be the key itself in PEM (such as {{ lookup('file', 'board.key') }}), not a path")
    return _read_secret(secret, base_dir, environ).encode()


def _read_certificate(files, base_dir, environ, errors):
    """The Certificate of `files`, or None after recording at its line why it cannot be had."""

    def fail(secret, message):
        Where(errors, secret.where.source, secret.where.line, secret.where.path).error(f"{secret.describe()}{message}")

    data = {}
    for name, secret in (("cert", files.cert), ("key", files.key)):
        try:
            data[name] = _read_bytes(secret, base_dir, environ)
        except _Bad as e:
            fail(secret, str(e))
    if len(data) < 2:
        return None
    try:
        cert_der, key_der = certificates.to_der(data["cert"], data["key"])
    except PocketpostError as e:  # its messages name what is wrong, never the key's contents
        message = str(e)
        if message.startswith("the certificate"):
            fail(files.cert, message)
        else:
            fail(files.key, message + (f" {files.cert.ref}" if message.endswith("certificate") else ""))
        return None
    return Certificate(cert_der, key_der, certificates.describe(cert_der))


def _read_relay_ca(ca, base_dir, errors):
    """The RelayCa of `ca`'s files read and converted to DER (as `pocketpost relay ca install`
    does), or None after recording at its line why one cannot be had."""
    from . import relay

    ders = []
    for secret in ca.files:
        where = Where(errors, secret.where.source, secret.where.line, secret.where.path)
        try:
            data = _read_bytes(secret, base_dir, {})
            ders += relay.ca_der_list(data)
        except _Bad as e:
            where.error(f"{secret.describe()}{e}")
            return None
        except PocketpostError as e:
            where.error(f"{secret.describe()}{e}")
            return None
    if len(ders) > relay.MAX_CA:
        where.error(f"{len(ders)} CA certificates in all; the board keeps at most {relay.MAX_CA}")
        return None
    return RelayCa(ca.files, tuple(ders), tuple(certificates.describe(d) for d in ders))


# ---- the Ansible module's parameters


def board_from_params(params: dict) -> BoardSpec:
    """The BoardSpec of the Ansible module's parameters (None meaning not given), secrets
    resolved; raises InventoryError listing every problem."""
    params = _without_none(params)
    errors = []
    where = Where(errors)
    _mapping(where, {k: v for k, v in params.items() if k != "name"}, BOARD_KEYS, "module parameters")
    state = parse_state(where, params, allow_clear=True)
    board_type, port, host, timeout = _connection(where, params, None, require_type=False)
    if errors:
        raise InventoryError(errors)
    name = params.get("name") or port
    spec = _board_spec(name, merge_states([state]), board_type=board_type, port=port, host=host, timeout=timeout)
    return resolve(spec)


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
