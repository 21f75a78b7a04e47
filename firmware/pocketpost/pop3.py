# The POP3 server (RFC 1939), with CAPA, PIPELINING and response codes (RFC 2449, RFC 3206) and
# SASL AUTH PLAIN / LOGIN (RFC 5034). States AUTHORIZATION and TRANSACTION are the session's;
# UPDATE happens inside QUIT.
import asyncio
import os

from micropython import const

from . import VERSION, crypto
from .heap import with_relief
from .mailbox import DELETE_COMMITTED
from .maildrop import Maildrop
from .session import Session
from .transparency import send_file, send_top

_AUTHORIZATION = const(1)
_TRANSACTION = const(2)
_ANY = const(3)
# A command that changes nothing before its reply: run again after a shortage (Session.command).
_REDO = const(4)

# RFC 2449 §4: a command line is at most 255 octets including its CRLF.
_MAX_COMMAND = const(255)

_CAPABILITIES = (
    "+OK Capability list follows\r\n"
    "TOP\r\n"
    "UIDL\r\n"
    "RESP-CODES\r\n"
    "AUTH-RESP-CODE\r\n"
    "PIPELINING\r\n"
    "EXPIRE NEVER\r\n"
    "IMPLEMENTATION pocketpost-" + VERSION + "\r\n"
).encode()
# Listed only while usable (RFC 2449 §5: capabilities may change with the state).
_CAPA_LOGIN = b"USER\r\nSASL PLAIN LOGIN\r\n"
_CAPA_STLS = b"STLS\r\n"

_ERR_AUTH = b"-ERR [AUTH] Authentication failed.\r\n"
_ERR_LOCKED_OUT = b"-ERR [SYS/TEMP] Too many failed logins, try again later.\r\n"
_ERR_IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
_ERR_STORAGE = b"-ERR [SYS/TEMP] Mail storage is not available, try again later.\r\n"
_ERR_NO_MESSAGE = b"-ERR No such message.\r\n"
_ERR_DELETED = b"-ERR Message is deleted.\r\n"
_ERR_SYNTAX = b"-ERR Invalid arguments.\r\n"
_ERR_UNKNOWN = b"-ERR Unknown command.\r\n"
_ERR_STATE = b"-ERR Command not valid in this state.\r\n"
_ERR_TOO_LONG = b"-ERR Line too long.\r\n"
_ERR_BAD_TEXT = b"-ERR Command is not valid text.\r\n"
_ERR_TOO_MANY = b"-ERR Too many bad commands, closing connection.\r\n"
_OK_LOGGED_IN = b"+OK Logged in.\r\n"  # (when the heap has no room for the counts)
ERR_PLAINTEXT = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"


def _number(text):
    """A message number or line count: decimal digits only, else None."""
    if not 0 < len(text) <= 10 or not text.isdigit():
        return None
    return int(text)


class Pop3Session(Session):
    NAME = "pop3"
    TIMEOUT_KEY = "pop3_idle_timeout"
    FAILED_REPLY = b"-ERR [SYS/TEMP] Local error, closing connection.\r\n"
    NOMEM_REPLY = b"-ERR [SYS/TEMP] Not enough memory, try again later.\r\n"
    # A multi-line reply cut off can only end with the connection (RFC 1939 has no way to say so).
    NOMEM_CLOSING = b""

    def __init__(self, app, conn, peer, submission=False):
        super().__init__(app, conn, peer, submission)
        self.state = _AUTHORIZATION
        self.user = None  # the name given by USER
        self.name = None  # the user logged in
        self.drop = None
        self.timestamp = None  # the APOP timestamp of the greeting

    # ---- session loop

    def greeting(self):
        if not self.app.users.apop_enabled():
            return b"+OK pocketpost POP3 ready.\r\n"
        self.timestamp = "<{}.{}@{}>".format(
            int.from_bytes(os.urandom(4), "big"), self.app.log.uptime_ms(), self.app.config["hostname"]
        )
        return "+OK pocketpost POP3 ready. {}\r\n".format(self.timestamp).encode()

    async def run(self):
        conn = self.conn
        await self.greet()
        while True:
            line = await conn.readline(_MAX_COMMAND)
            if line is None:
                if self._bad(_ERR_TOO_LONG):
                    return
                continue
            try:
                text = str(line, "utf-8")
            except UnicodeError:
                if self._bad(_ERR_BAD_TEXT):
                    return
                continue
            verb, _, arg = text.partition(" ")
            entry = _COMMANDS.get(verb.upper())
            if entry is None:
                if self._bad(_ERR_UNKNOWN):
                    return
                continue
            if not entry[1] & self.state:
                if self._bad(_ERR_STATE):
                    return
                continue
            if await self.command(entry[0], arg, entry[1] & _REDO):
                return  # QUIT

    def _bad(self, reply):
        """Answers a bad command (malformed, or out of sequence: the client's fault whatever
        the server's settings and the mailbox); True when the client has used up its bad
        commands, and the session ends. Handlers return that, as QUIT does."""
        self.bad_commands += 1
        if self.bad_commands >= self.app.config["max_bad_commands"]:
            self.conn.put(_ERR_TOO_MANY)
            self.log("too many bad commands")
            return True
        self.conn.put(reply)
        return False

    def finish(self):
        # A session that ends without QUIT (dropped, timed out) deletes nothing.
        if self.name is not None:
            self.app.store.unlock(self.name)
            self.name = None
            self.drop = None

    # ---- AUTHORIZATION

    async def cmd_stls(self, arg):
        conn = self.conn
        if not self.tls_offered():
            conn.put(b"-ERR STLS is not available.\r\n")
            return
        if arg:
            return self._bad(_ERR_SYNTAX)
        if not self.reserve_tls():
            conn.put(b"-ERR [SYS/TEMP] Too many TLS sessions, try again later.\r\n")
            return
        conn.put(b"+OK Begin TLS negotiation.\r\n")
        await conn.flush()
        self.begin_tls()
        self.user = None  # everything from before TLS is forgotten (RFC 2595 §4)
        self.log("STLS")

    async def cmd_user(self, arg):
        if self.refuse_auth() is not None:
            return
        if not arg:
            return self._bad(_ERR_SYNTAX)
        self.user = arg
        self.conn.put(b"+OK Send PASS.\r\n")

    def refuse_auth(self):
        # (USER and PASS are refused the same way, before TLS.)
        if self.auth_allowed():
            return None
        self.conn.put(ERR_PLAINTEXT)
        return False

    async def cmd_pass(self, arg):
        if self.refuse_auth() is not None:
            return
        if self.user is None:
            return self._bad(b"-ERR No user name given.\r\n")
        name = self.user
        self.user = None
        await self.login(name, "USER", self.app.users.verify, name, arg.encode())

    async def cmd_apop(self, arg):
        parts = arg.split()
        if self.timestamp is None:
            self.conn.put(b"-ERR APOP is not enabled.\r\n")
            return
        if len(parts) != 2:
            return self._bad(_ERR_SYNTAX)
        await self.login(parts[0], "APOP", self._apop_matches, parts[0], parts[1].lower())

    async def _apop_matches(self, name, digest):
        record = self.app.users.get(name)
        secret = record.get("apop") if record else None
        if secret is None:
            return False
        expected = crypto.md5_hex((self.timestamp + secret).encode())
        return crypto.equal(expected.encode(), digest.encode())

    async def login(self, name, how, check, *args):
        """Finishes a login attempt: `await check(*args)` says whether the secret is right."""
        app = self.app
        conn = self.conn
        if app.throttle.locked_out(self.peer):
            self.log("login refused (too many failures): {}".format(name))
            conn.put(_ERR_LOCKED_OUT)
            return
        # (The check changes nothing: where it runs short, it is tried again a moment later.)
        right = await with_relief(app.relieve_memory, check, *args)
        if not right:
            # Counted as a failure from here on: a shortage must not make it a temporary error
            # (the client would try the same password again, and be counted twice).
            delay = app.throttle.failed(self.peer)
            try:
                self.log("login failed: {} ({})".format(name, how))
                await conn.flush()
            except MemoryError:
                pass  # the answer matters more than the log line, and waits for the delay anyway
            await asyncio.sleep_ms(delay)
            conn.put(_ERR_AUTH)
            return
        app.throttle.succeeded(self.peer)
        if not app.storage_ready():
            conn.put(_ERR_STORAGE)
            return
        if not app.store.lock(name):
            self.log("login {}: mailbox in use".format(name))
            conn.put(_ERR_IN_USE)
            return
        try:
            # A mailbox of thousands of messages needs its deletion marks in one go: when the
            # heap is short, what can be given back is, and it is tried again a moment later,
            # while the other sessions finish what they allocate (heap.with_relief).
            self.drop = await with_relief(app.relieve_memory, Maildrop, app.store, name)
        # (One class a clause, MemoryError first: a tuple of classes is made as its clause is
        # tried, and on a short heap its own MemoryError would skip the unlocking.)
        except MemoryError:
            app.store.unlock(name)
            raise  # answered by the session loop
        except OSError as e:  # the card
            return self._cannot_open(name, e)
        except ValueError as e:  # a damaged index
            return self._cannot_open(name, e)
        # Logged in from here on: a shortage must not answer -ERR to a session that is now in
        # the TRANSACTION state, its mailbox locked.
        try:
            reply = "+OK Logged in, {} messages ({} octets).\r\n".format(self.drop.count, self.drop.octets).encode()
        except MemoryError:
            reply = _OK_LOGGED_IN
        self.name = name
        self.state = _TRANSACTION
        try:
            self.log("login {} ({}), {} messages".format(name, how, self.drop.count))
        except MemoryError:
            app.log.info(self.NAME, "login (no memory for its details)")  # (made without the heap)
        conn.put(reply)

    def _update_failed(self, e):
        self.app.log.exception(self.NAME, "{} update failed for {}".format(self.peer, self.name), e)
        self.conn.put(b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n")
        return True

    def _cannot_open(self, name, e):
        self.app.store.unlock(name)
        self.app.log.exception(self.NAME, "{} cannot open mailbox {}".format(self.peer, name), e)
        self.conn.put(_ERR_STORAGE)

    # ---- both states

    async def cmd_capa(self, arg):
        conn = self.conn
        conn.put(_CAPABILITIES)
        if self.state == _AUTHORIZATION:
            if self.tls_offered():
                conn.put(_CAPA_STLS)
            if self.auth_allowed():
                conn.put(_CAPA_LOGIN)
        conn.put(b".\r\n")

    async def cmd_quit(self, arg):
        conn = self.conn
        if self.state == _TRANSACTION:
            try:
                deleted = await self.drop.update(self.app.relieve_memory)
            except MemoryError:  # (first, and alone: see login)
                drop = self.drop
                if not drop.retried:
                    raise  # short before the deletion began: QUIT is run again
                if drop.box.delete_step != DELETE_COMMITTED:
                    # Nothing deleted (the index is as it was): the session goes on.
                    drop.retried = False
                    conn.put(self.NOMEM_REPLY)
                    try:
                        self.log("QUIT: deletion not done (not enough memory)")
                    except MemoryError:
                        pass
                    return False
                # Short again after the retries: the session ends (its numbering may no longer
                # match the index), and the journal it committed is finished at the mailbox's
                # next opening (MailStore.existing_mailbox).
                self.app.store.unfinished.add(self.name)
                conn.put(b"-ERR [SYS/TEMP] Not enough memory, some deleted messages were not removed yet.\r\n")
                try:
                    self.log("logout {}: deletion unfinished (not enough memory)".format(self.name))
                except MemoryError:
                    pass
                return True
            except OSError as e:  # the card
                return self._update_failed(e)
            except ValueError as e:  # a damaged index
                return self._update_failed(e)
            try:
                self.log("logout {}, {} deleted".format(self.name, deleted))
            except MemoryError:
                pass  # done: the reply matters more than the log line
            self.finish()  # unlocked before the reply: the client may log in again at once
        conn.put(b"+OK Logging out.\r\n")
        return True

    # ---- TRANSACTION

    def _message(self, n):
        """(n, seq, size) for message number n, or None after answering that there is no such
        message: not a bad command, as the answer depends on the maildrop, not on the command."""
        if not 1 <= n <= self.drop.count:
            self.conn.put(_ERR_NO_MESSAGE)
            return None
        if self.drop.is_deleted(n):
            self.conn.put(_ERR_DELETED)
            return None
        seq, size = self.drop.message(n)
        return n, seq, size

    async def cmd_stat(self, arg):
        count, octets = self.drop.visible()
        self.conn.put(b"+OK %d %d\r\n" % (count, octets))

    async def cmd_list(self, arg):
        return await self._listing(arg, False)

    async def cmd_uidl(self, arg):
        return await self._listing(arg, True)

    async def _listing(self, arg, uids):
        conn = self.conn
        drop = self.drop
        if arg:
            n = _number(arg)
            if n is None:
                return self._bad(_ERR_SYNTAX)
            found = self._message(n)
            if found:
                n, seq, size = found
                conn.put(b"+OK %d %s\r\n" % (n, drop.uidl(seq)) if uids else b"+OK %d %d\r\n" % (n, size))
            return
        if uids:
            conn.put(b"+OK Unique-ID listing follows\r\n")
        else:
            count, octets = drop.visible()
            conn.put("+OK {} messages ({} octets)\r\n".format(count, octets).encode())
        for line in drop.listing(uids):
            conn.put(line)
            if conn.full() and not conn.push():
                await conn.flush()
        conn.put(b".\r\n")

    async def cmd_retr(self, arg):
        n = _number(arg)
        if n is None:
            return self._bad(_ERR_SYNTAX)
        found = self._message(n)
        if found:
            await self._send(found, b"+OK %d octets\r\n" % found[2], -1)

    async def cmd_top(self, arg):
        parts = arg.split(" ")
        n = _number(parts[0])
        lines = _number(parts[1]) if len(parts) == 2 else None
        if n is None or lines is None:
            return self._bad(_ERR_SYNTAX)
        found = self._message(n)
        if found:
            await self._send(found, b"+OK Top of message follows\r\n", lines)

    async def _send(self, found, status, body_lines):
        conn = self.conn
        try:
            f = open(self.drop.path(found[1]), "rb")
        except OSError as e:
            self.app.log.exception(self.NAME, "{} cannot open message {}".format(self.peer, found[1]), e)
            conn.put(b"-ERR [SYS/TEMP] Cannot read the message.\r\n")
            return
        try:
            conn.put(status)
            if body_lines < 0:
                await send_file(conn, f)
            else:
                await send_top(conn, f, self.drop.buf, body_lines)
        finally:
            f.close()

    async def cmd_dele(self, arg):
        n = _number(arg)
        if n is None:
            return self._bad(_ERR_SYNTAX)
        found = self._message(n)
        if found:
            self.drop.mark_deleted(found[0], found[2])
            self.conn.put(b"+OK Marked to be deleted.\r\n")

    async def cmd_noop(self, arg):
        self.conn.put(b"+OK\r\n")

    async def cmd_rset(self, arg):
        self.drop.unmark_all()
        self.conn.put("+OK {} messages ({} octets).\r\n".format(self.drop.count, self.drop.octets).encode())


_COMMANDS = {
    "USER": (Pop3Session.cmd_user, _AUTHORIZATION),
    "PASS": (Pop3Session.cmd_pass, _AUTHORIZATION),
    "APOP": (Pop3Session.cmd_apop, _AUTHORIZATION),
    "AUTH": (Pop3Session.cmd_auth, _AUTHORIZATION),
    "STLS": (Pop3Session.cmd_stls, _AUTHORIZATION),
    "CAPA": (Pop3Session.cmd_capa, _ANY | _REDO),
    "QUIT": (Pop3Session.cmd_quit, _ANY | _REDO),  # its deletion goes on where it stopped
    "STAT": (Pop3Session.cmd_stat, _TRANSACTION | _REDO),
    "LIST": (Pop3Session.cmd_list, _TRANSACTION | _REDO),
    "RETR": (Pop3Session.cmd_retr, _TRANSACTION | _REDO),
    "DELE": (Pop3Session.cmd_dele, _TRANSACTION),
    "NOOP": (Pop3Session.cmd_noop, _TRANSACTION | _REDO),
    "RSET": (Pop3Session.cmd_rset, _TRANSACTION),
    "TOP": (Pop3Session.cmd_top, _TRANSACTION | _REDO),
    "UIDL": (Pop3Session.cmd_uidl, _TRANSACTION | _REDO),
}
