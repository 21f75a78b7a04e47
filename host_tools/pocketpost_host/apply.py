"""Making a board match its BoardSpec: read its state over the console, compare, change only
what differs. Used by `pocketpost apply` (fleet.py) and the Ansible module.

What can be compared and what cannot (the board never reveals a secret):

- configuration values are compared with what `config.get` reports; a key that the board's
  command line fixes for this run (`overridden`) cannot be changed over the console, so a
  difference there fails instead of being "changed" on every run;
- the Wi-Fi password reads `********` once set: it is set when the board has none (or should have
  none), and set again on every run only with `update_password: always`;
- users are compared by name and APOP flag (`user.list`). A password is set when the user is
  created, when its APOP flag has to change (`user.passwd` takes the hash with it), and on every
  run with `update_password: always`, like Ansible's user module: a password changed by hand
  is otherwise not seen;
- the relay's password (the smarthost's) is handled like the Wi-Fi password, and its CA
  certificates are compared by their SHA-256 fingerprints, in order, with what `relay.ca.show`
  reports, and installed (all of them, replacing the board's) only when they differ;
- collector accounts are compared by user, host and login with what `collect.list` reports, and
  their settings (port, security, interval, keep, delete_after, max_size) one by one; an account
  is added (or changed: `collect.add` again) with its password from the inventory, and deleted
  with `state: absent`; the password reads `********` and is sent again only when the account is
  created or changed, or with `update_password: always`;
- the TLS certificate is compared by its SHA-256 fingerprint with what `tls.show` reports
  (NOTFOUND: none installed) and installed only when it differs. The key never leaves the board,
  but it need not be compared: the inventory's key is checked to belong to its certificate before
  anything is sent, so a different key always comes with a different certificate.
"""

import socket
from dataclasses import dataclass, field

from . import relay, tls
from .errors import BoardError, BoardTimeout, PocketpostError, PortError
from .passwords import hash_password
from .provision import CONFIG_KEYS, DEFAULT_TIMEOUT, Board

MASK = "********"  # what the board shows for a secret that is set, and what a diff shows
OK, CHANGED, FAILED = "ok", "changed", "failed"
CERTIFICATE = "tls certificate"  # the item (and reboot key) of the certificate
RELAY_CA = "relay ca certificates"  # the item of the smarthost's CA certificates


@dataclass
class Item:
    """One part of a board's state and what apply did with it. `before` and `after` are lines
    for a diff, secrets masked; None when nothing changed."""

    name: str
    status: str
    message: str = ""
    before: list | None = None
    after: list | None = None


@dataclass
class BoardResult:
    name: str
    port: str
    items: list = field(default_factory=list)
    unreachable: str | None = None  # why the board could not be reached
    reboot_keys: list = field(default_factory=list)  # changed keys that apply at the next boot

    def count(self, status):
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self):
        return self.unreachable is not None or self.count(FAILED) > 0

    @property
    def changed(self):
        return self.count(CHANGED) > 0


class _Lost(Exception):
    """The board stopped answering: the rest of its items are not tried."""


def show(value):
    """A configuration value as a person types it."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else '""'
    if value == "":
        return '""'
    return str(value)


class _Run:
    def __init__(self, spec, board, check, result):
        self.spec = spec
        self.board = board
        self.check = check
        self.result = result

    def add(self, name, status, message="", before=None, after=None):
        self.result.items.append(Item(name, status, message, before, after))

    def done(self, verb):
        """What was done ("set"), or in check mode what would be ("would be set")."""
        return f"would be {verb}" if self.check else verb

    def call(self, name, action):
        """Runs a change on the board; a refusal fails the item (None), a lost board all."""
        try:
            return action()
        except BoardError as e:
            self.add(name, FAILED, str(e))
        except (BoardTimeout, PortError) as e:
            self.add(name, FAILED, str(e))
            raise _Lost() from None
        return None

    # ---- configuration

    def config(self, current, overridden):
        order = list(CONFIG_KEYS)  # the firmware's order, whatever the inventory's
        for key, wanted in sorted(self.spec.config.items(), key=lambda kv: order.index(kv[0])):
            have = current.get(key)
            if have == wanted:
                self.add(key, OK)
                continue
            before, after = [f"{key}: {show(have)}"], [f"{key}: {show(wanted)}"]
            if key in overridden:
                self.add(
                    key, FAILED,
                    f"the board's command line sets {key} to {show(have)} for this run; the console "
                    f"cannot change it (start the board with {show(wanted)})",
                )
                continue
            later = CONFIG_KEYS[key].applies == "reboot"
            message = self.done("set") + (" (takes effect after a reboot)" if later else "")
            if not self.check and self.call(key, lambda k=key, v=wanted: self.board.set_config(k, v)) is None:
                continue
            if later:
                self.result.reboot_keys.append(key)
            self.add(key, CHANGED, message, before, after)

    def wifi_password(self, current):
        self.secret_setting(current, "wifi_password", self.spec.wifi_password, self.spec.wifi_update_password, True)

    def relay_password(self, current):
        self.secret_setting(current, "relay_password", self.spec.relay_password, self.spec.relay_update_password, False)

    def secret_setting(self, current, key, wanted, update_password, later):
        """A secret config key (the board shows only whether it is set): set when the board has
        none or should have none, and again with `update_password: always`."""
        if wanted is None:
            return
        have_one = current.get(key, "") != ""
        if not wanted and not have_one:
            self.add(key, OK)
            return
        if wanted and have_one and update_password != "always":
            self.add(key, OK, "set (the board does not reveal it: not compared)")
            return
        if not wanted:
            message = self.done("cleared")
        else:
            message = self.done("set again (update_password: always)" if have_one else "set")
        if not self.check and self.call(key, lambda: self.board.set_config(key, wanted)) is None:
            return
        if later:
            self.result.reboot_keys.append(key)
            message += " (takes effect after a reboot)"
        self.add(
            key, CHANGED, message,
            [f"{key}: {MASK if have_one else show('')}"], [f"{key}: {MASK if wanted else show('')}"],
        )

    # ---- the relay's CA certificates

    def relay_ca(self):
        wanted = self.spec.relay_ca
        if wanted is None:
            return
        try:
            shown = self.board.request("relay.ca.show")["certificates"]
        except BoardError as e:
            self.add(RELAY_CA, FAILED, str(e))
            return
        except (BoardTimeout, PortError) as e:
            self.add(RELAY_CA, FAILED, str(e))
            raise _Lost() from None
        summary = "; ".join(_certificate_summary(c) for c in wanted.shown)
        if [c.get("sha256") for c in shown] == wanted.fingerprints:
            self.add(RELAY_CA, OK, summary)
            return
        before = [line for c in shown for line in _certificate_lines(c)] or ["absent"]
        message = self.done("installed") + f": {summary}"
        if not self.check:
            reply = self.call(RELAY_CA, lambda: relay.install_ca_der(self.board, wanted.ders))
            if reply is None:
                return
            if [c.get("sha256") for c in reply.get("certificates", [])] != wanted.fingerprints:
                self.add(RELAY_CA, FAILED, "the board reports other certificates after installing")
                return
            if reply.get("applies") == "reboot":
                # In place; the relay makes its TLS context with them when it next needs one
                # (or at the next boot), so no reboot is needed.
                message += " (the board had no room for the TLS context now: the relay makes it when it needs it)"
        self.add(RELAY_CA, CHANGED, message, before, [line for c in wanted.shown for line in _certificate_lines(c)])

    # ---- collector accounts

    def collect(self):
        wanted = self.spec.collect
        if not wanted:
            return
        try:
            listed = self.board.request("collect.list")["accounts"]
        except BoardError as e:
            self.add("collect", FAILED, str(e))
            return
        except (BoardTimeout, PortError) as e:
            self.add("collect", FAILED, str(e))
            raise _Lost() from None
        on_board = {(a["user"], a["host"], a["login"]): a for a in listed}
        for key, account in wanted.items():
            item = f"collect {account.user} {account.login}@{account.host}"
            have = on_board.get(key)
            if account.state == "absent":
                if have is None:
                    self.add(item, OK, "absent")
                elif self.check or self.call(item, lambda a=have: self.board.request("collect.del", {"id": a["id"]})):
                    self.add(item, CHANGED, self.done("deleted"), _collect_lines(have), ["absent"])
                continue
            settings = _collect_settings(account)
            after = _collect_lines(settings)
            if have is None:
                message = self.done("added")
                before = ["absent"]
            else:
                different = [k for k, v in settings.items() if have.get(k) != v]
                if different:
                    message = self.done("changed") + ": " + ", ".join(different) + " (password set again)"
                elif account.update_password == "always":
                    message = self.done("password set again (update_password: always)")
                else:
                    self.add(item, OK, "password set (the board does not reveal it: not compared)")
                    continue
                before = _collect_lines(have)
            args = dict(settings, user=account.user, host=account.host, login=account.login, password=account.password)
            if self.check or self.call(item, lambda a=args: self.board.request("collect.add", a)):
                self.add(item, CHANGED, message, before, after)

    # ---- the TLS certificate

    def certificate(self, info):
        wanted = self.spec.tls
        if wanted is None:
            return
        try:
            shown = self.board.request("tls.show")
        except BoardError as e:
            if e.code != "NOTFOUND":
                self.add(CERTIFICATE, FAILED, str(e))
                return
            shown = None
        except (BoardTimeout, PortError) as e:
            self.add(CERTIFICATE, FAILED, str(e))
            raise _Lost() from None
        if shown is not None and shown.get("sha256") == wanted.fingerprint:
            message = _certificate_summary(shown)
            if not info.get("tls", {}).get("certificate", True):
                # Installed by an earlier run that the board could not load at once.
                self.result.reboot_keys.append(CERTIFICATE)
                message += "; not loaded yet: takes effect after a reboot"
            self.add(CERTIFICATE, OK, message)
            return
        before = ["absent"] if shown is None else _certificate_lines(shown)
        message = self.done("installed") + f": {_certificate_summary(wanted.shown)}"
        if not self.check:
            reply = self.call(CERTIFICATE, lambda: tls.install(self.board, wanted.cert_der, wanted.key_der))
            if reply is None:
                return
            if reply.get("sha256") != wanted.fingerprint:
                self.add(CERTIFICATE, FAILED, f"the board reports SHA-256 {reply.get('sha256')} after installing")
                return
            if reply.get("applies") == "reboot":
                self.result.reboot_keys.append(CERTIFICATE)
                message += " (takes effect after a reboot: the board had no room to load it now)"
        self.add(CERTIFICATE, CHANGED, message, before, _certificate_lines(wanted.shown))

    # ---- users

    def users(self, present):
        spec = self.spec
        for name, user in spec.users.items():
            item = f"user {name}"
            on_board = present.get(name)
            purge = spec.purge if user.purge is None else user.purge
            if user.state == "absent":
                if on_board is None:
                    self.add(item, OK, "absent")
                else:
                    self.remove(item, name, on_board, purge, "")
                continue
            secret = user.password if user.apop else None
            wanted = _user_lines(user.apop, password=True)
            if on_board is None:
                message = self.done("created") + (
                    " (its APOP secret is stored on the board in clear text)" if user.apop else ""
                )
                if self.check or self.call(item, lambda: self.board.add_user_hash(name, self._hash(user), secret)):
                    self.add(item, CHANGED, message, ["absent"], wanted)
                continue
            if on_board["apop"] != user.apop:
                reason = "APOP " + ("enabled" if user.apop else "disabled") + ", password set from the inventory"
            else:
                # In a list: call() answers None when the board refused (the item then failed).
                answer = self.call(item, lambda: [self.board.password_matches(name, user.password, user.password_hash)])
                if answer is None:
                    continue
                same = answer[0]  # None: this firmware cannot compare passwords
                if same is False and user.update_password == "always":
                    reason = "password set: it was not the inventory's (changed on the board?)"
                elif same is None and user.update_password == "always":
                    reason = "password set (update_password: always; this firmware cannot compare it)"
                elif same is False:
                    self.add(item, OK, "its password is not the inventory's (update_password: on_create leaves it)")
                    continue
                else:
                    self.add(item, OK)
                    continue
            message = ("would be: " if self.check else "") + reason
            if self.check or self.call(item, lambda: self.board.set_password_hash(name, self._hash(user), secret)):
                self.add(item, CHANGED, message, _user_lines(on_board["apop"]), wanted)
        if spec.users_exclusive:
            for name in sorted(set(present) - set(spec.users)):
                self.remove(f"user {name}", name, present[name], spec.purge, " (not in the inventory: users_exclusive)")

    @staticmethod
    def _hash(user):
        return user.password_hash if user.password_hash else hash_password(user.password)

    def remove(self, item, name, on_board, purge, why):
        kept = "mailbox deleted" if purge else "mailbox kept"
        message = self.done("removed") + f", {kept}{why}"
        if self.check or self.call(item, lambda: self.board.delete_user(name, purge=purge)):
            self.add(item, CHANGED, message, _user_lines(on_board["apop"], on_board["messages"]), [f"absent ({kept})"])

    # ---- the network

    def network(self, info):
        host = self.spec.host
        if host is None:
            return
        ports = info.get("ports", {})
        timeout = self.board.timeout
        answers = []
        for protocol, port, greeting in (("POP3", ports.get("pop3"), b"+OK"), ("SMTP", ports.get("smtp"), b"220")):
            try:
                _greeting(host, port, greeting, timeout)
            except OSError as e:
                reason = e.strerror or str(e) or type(e).__name__
                self.add("network", FAILED, f"{protocol} on {host}:{port}: {reason}")
                return
            answers.append(f"{protocol} {host}:{port} answers")
        self.add("network", OK, "; ".join(answers))


def _collect_settings(account):
    """The settings of an inventory's collector account as collect.list shows them."""
    return {
        "port": account.port or (995 if account.security == "tls" else 110),
        "security": account.security,
        "interval": account.interval,
        "keep": account.keep,
        "delete_days": account.delete_after,
        "max_size": account.max_size,
    }


def _collect_lines(account):
    keys = ("port", "security", "interval", "keep", "delete_days", "max_size")
    return [f"{k}: {show(account.get(k))}" for k in keys] + [f"password: {MASK}"]


def _certificate_summary(shown):
    return f"{shown.get('subject')}, valid until {shown.get('not_after')}"


def _certificate_lines(shown):
    """A certificate as diff lines (the key is never shown, nor read from a board)."""
    labels = {"subject": "subject", "issuer": "issuer", "not_after": "not_after", "key type": "key", "sha256": "sha256"}
    return [f"{label}: {shown.get(key)}" for label, key in labels.items()]


def _user_lines(apop, messages=None, password=False):
    lines = ["present", f"apop: {'yes' if apop else 'no'}"]
    if password:
        lines.append(f"password: {MASK}")
    if messages is not None:
        lines.append(f"messages: {messages}")
    return lines


def _greeting(host, port, expected, timeout):
    """Connects to a server, reads its greeting and says QUIT; raises OSError unless the
    greeting starts with `expected`."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        line = b""
        while b"\n" not in line and len(line) < 512:
            data = conn.recv(512)
            if not data:
                break
            line += data
        if not line.startswith(expected):
            raise OSError(f"no {expected.decode()} greeting (got {line[:60]!r})")
        try:
            conn.sendall(b"QUIT\r\n")
        except OSError:
            pass


def apply_board(spec, check=False, timeout=DEFAULT_TIMEOUT, opener=Board.open) -> BoardResult:
    """Makes the board of `spec` (secrets resolved: inventory.resolve) match it; with `check`,
    only says what would change. Never raises for a board's failure: the result says it."""
    result = BoardResult(spec.name, spec.port)
    try:
        board = opener(spec.port, spec.timeout or timeout)
    except (BoardTimeout, PortError) as e:
        result.unreachable = str(e)
        return result
    except PocketpostError as e:  # answers, but not as this pocketpost can work with
        result.items.append(Item("board", FAILED, str(e)))
        return result
    try:
        with board:
            run = _Run(spec, board, check, result)
            try:
                info = board.info()
                kind = info.get("board")
                if spec.board_type is not None and kind != spec.board_type:
                    run.add(
                        "board", FAILED,
                        f"{spec.port} is a {kind!r} board; the inventory says {spec.board_type!r} (wrong port?)",
                    )
                    return result
                run.add("board", OK, f"{kind}, firmware {info.get('firmware')}")
                reply = board.get_config()
                current, overridden = reply["config"], set(reply.get("overridden", []))
                present = {u["name"]: u for u in board.list_users()}
                run.config(current, overridden)
                run.wifi_password(current)
                run.relay_password(current)
                run.relay_ca()
                run.certificate(info)
                run.users(present)
                run.collect()
                run.network(info)
            except _Lost:
                pass
            except (BoardTimeout, PortError, BoardError) as e:
                run.add("board", FAILED, str(e))
    except PocketpostError as e:
        result.items.append(Item("board", FAILED, str(e)))
    return result
