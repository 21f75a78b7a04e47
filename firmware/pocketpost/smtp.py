# The SMTP server (RFC 5321) for local delivery, with SIZE (RFC 1870), 8BITMIME (RFC 6152),
# PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034, RFC 3463) and AUTH PLAIN / LOGIN
# (RFC 4954). Mail is accepted only for users of the local domains: never an open relay.
import os
import time

from micropython import const

from . import unload
from .config import valid_domain
from .dates import rfc5322_date
from .heap import PATIENT, with_relief
from .session import Session
from .transparency import receive_data

unload("pocketpost.dates")  # kept by this module only: unloaded with it

# Every command line, AUTH responses included, must fit here (RFC 5321 §4.5.3.1.4 sets 512 for
# plain commands; RFC 4954 asks servers to take longer AUTH lines).
_MAX_LINE = const(768)
# RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets (with the angle brackets).
_MAX_LOCAL = const(64)
_MAX_DOMAIN = const(255)
_MAX_PATH = const(256)
_ENOSPC = const(28)


_OK = b"250 2.0.0 Ok\r\n"
_ERR_UNKNOWN = b"500 5.5.2 Error: command not recognized\r\n"
_ERR_TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
_ERR_BAD_TEXT = b"500 5.5.2 Error: command contains invalid characters\r\n"
_ERR_NO_HELO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
_ERR_NO_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
_ERR_NO_EHLO = b"503 5.5.1 Error: send EHLO first\r\n"
_ERR_STORAGE = b"451 4.3.0 Mail storage is not available, try again later\r\n"


def _printable(text):
    """True when text is printable ASCII (no control characters, no 8-bit)."""
    for c in text:
        if not " " <= c <= "~":
            return False
    return True


def parse_path(text):
    """Splits "<address> params" into (address, params); address "" for "<>". Returns None
    when the path is malformed or longer than RFC 5321 allows."""
    text = text.lstrip(" ")
    if not text.startswith("<"):
        return None
    end = text.find(">")
    if end < 0 or end + 1 > _MAX_PATH or (end + 1 < len(text) and text[end + 1] != " "):
        return None
    address = text[1:end]
    if address.startswith("@"):  # a source route (RFC 5321 §4.1.2): ignored
        colon = address.find(":")
        if colon < 0:
            return None
        address = address[colon + 1 :]
    # "<Postmaster>" without a domain is the one address RFC 5321 (§4.1.1.3) allows bare.
    if address and not _valid_address(address) and address.lower() != "postmaster":
        return None
    return address, text[end + 1 :].split()


def _unquote(local):
    """The local part without the quotes of a quoted string ("alice" is alice, RFC 5321 §4.1.2)."""
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return local
    out = []
    escaped = False
    for c in local[1:-1]:
        if c == "\\" and not escaped:
            escaped = True
            continue
        out.append(c)
        escaped = False
    return "".join(out)


def _valid_address(address):
    local, at, domain = address.rpartition("@")
    if not at or not 0 < len(local) <= _MAX_LOCAL or not 0 < len(domain) <= _MAX_DOMAIN:
        return False
    if not _printable(local) or (" " in local and local[0] != '"'):
        return False
    if domain.startswith("[") and domain.endswith("]"):  # an address literal
        return _printable(domain) and " " not in domain
    return valid_domain(domain.lower())


class SmtpSession(Session):
    NAME = "smtp"
    TIMEOUT_KEY = "smtp_timeout"
    FAILED_REPLY = b"421 4.3.0 Local error, closing connection\r\n"
    NOMEM_REPLY = b"451 4.3.0 Not enough memory, try again later\r\n"
    NOMEM_CLOSING = b"421 4.3.0 Not enough memory, closing connection\r\n"

    def __init__(self, app, conn, peer, submission=False):
        super().__init__(app, conn, peer, submission)
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self._reset()

    def _reset(self):
        self.sender = None  # the reverse-path of the transaction, "" for the null sender
        self.recipients = 0  # accepted RCPT commands
        self.first_recipient = None
        self.mailboxes = []  # distinct mailboxes to deliver to
        self.remote = []  # recipients of other domains, queued for the smarthost (outbox.py)
        self.enqueue = None  # enqueue.py's code, from the transaction's first such recipient
        # The last MAIL was refused: the RCPT and DATA that a pipelining client (RFC 2920) sent
        # behind it without waiting for the refusal get 503 but do not count as bad commands.
        self.mail_refused = False

    def reply(self, text):
        self.conn.put(text.encode() + b"\r\n")

    # ---- session loop

    def greeting(self):
        return "220 {} ESMTP pocketpost\r\n".format(self.app.config["hostname"]).encode()

    async def run(self):
        conn = self.conn
        await self.greet()
        while True:
            line = await conn.readline(_MAX_LINE)
            if line is None:
                if self._bad(_ERR_TOO_LONG):
                    return
                continue
            try:
                text = str(line, "utf-8")
            except UnicodeError:
                text = None
            if text is None or not _printable(text):
                if self._bad(_ERR_BAD_TEXT):
                    return
                continue
            verb, _, arg = text.partition(" ")
            handler = _COMMANDS.get(verb.upper())
            if handler is None:
                if self._bad(_ERR_UNKNOWN):
                    return
                continue
            if await self.command(handler, arg, handler in _REDO):
                return  # QUIT

    def _bad(self, reply):
        """Answers a bad command (malformed, or out of sequence: the client's fault whatever
        the server's settings and mailboxes); True when the client has used up its bad
        commands, and the session ends. Handlers return that, as QUIT does."""
        self.bad_commands += 1
        if self.bad_commands >= self.app.config["max_bad_commands"]:
            self.reply("421 4.7.0 {} Error: too many errors".format(self.app.config["hostname"]))
            self.log("too many bad commands")
            return True
        self.conn.put(reply)
        return False

    def timeout_reply(self):
        return "421 4.4.2 {} Error: timeout exceeded\r\n".format(self.app.config["hostname"]).encode()

    # ---- greeting commands

    def refuse_auth(self):
        if not self.esmtp:
            return self._bad(b"503 5.5.1 Error: send EHLO first\r\n")
        if self.auth_user is not None:
            return self._bad(b"503 5.5.1 Error: already authenticated\r\n")
        if self.sender is not None:
            return self._bad(b"503 5.5.1 Error: MAIL transaction in progress\r\n")
        if not self.auth_allowed():
            self.conn.put(b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
            return False
        return None

    async def cmd_ehlo(self, arg):
        if not arg.strip():
            return self._bad(b"501 5.5.4 Syntax: EHLO hostname\r\n")
        self.helo = arg.strip()
        self.esmtp = True
        self._reset()
        config = self.app.config
        self.reply(
            "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES".format(
                config["hostname"], config["max_message_size"]
            )
        )
        # Only what can be used now (RFC 3207 §4.2, RFC 4954 §4).
        if self.tls_offered():
            self.conn.put(b"250-STARTTLS\r\n")
        if self.auth_allowed():
            self.conn.put(b"250-AUTH PLAIN LOGIN\r\n")
        self.conn.put(b"250 HELP\r\n")

    async def cmd_helo(self, arg):
        if not arg.strip():
            return self._bad(b"501 5.5.4 Syntax: HELO hostname\r\n")
        self.helo = arg.strip()
        self.esmtp = False
        self._reset()
        self.reply("250 {}".format(self.app.config["hostname"]))

    # ---- the mail transaction

    async def cmd_mail(self, arg):
        self.mail_refused = True  # until it is accepted below
        if self.helo is None:
            return self._bad(_ERR_NO_HELO)
        if self.submission and self.auth_user is None:
            self.conn.put(b"530 5.7.0 Authentication required\r\n")
            return
        if self.sender is not None:
            return self._bad(b"503 5.5.1 Error: nested MAIL command\r\n")
        if arg[:5].upper() != "FROM:":
            return self._bad(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
        parsed = parse_path(arg[5:])
        if parsed is None:
            return self._bad(b"501 5.1.7 Bad sender address syntax\r\n")
        address, params = parsed
        limit = self.app.config["max_message_size"]
        for param in params:
            if not self.esmtp:
                return self._bad(b"555 5.5.4 Error: parameters need EHLO\r\n")
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    return self._bad(b"501 5.5.4 Syntax error in parameters: SIZE=number\r\n")
                if int(value) > limit:
                    self.conn.put(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
                    return
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                pass
            elif key == "AUTH" and value:
                pass  # RFC 4954 §5: the original submitter; nothing is relayed, so unused
            else:
                return self._bad("555 5.5.4 Unsupported option: {}\r\n".format(param).encode())
        if not self.app.storage_ready():
            self.conn.put(_ERR_STORAGE)
            return
        self.sender = address
        self.mail_refused = False
        self.conn.put(b"250 2.1.0 Ok\r\n")

    async def cmd_rcpt(self, arg):
        # Run again after a shortage (_REDO): what a short RCPT had added is taken back first, so
        # the recipient is counted once, and not at all when the client hears a temporary error.
        recipients, first, mailboxes, remote = self.recipients, self.first_recipient, len(self.mailboxes), len(self.remote)
        try:
            return await self._rcpt(arg)
        except MemoryError:
            self.recipients, self.first_recipient = recipients, first
            del self.mailboxes[mailboxes:]
            del self.remote[remote:]
            raise

    async def _rcpt(self, arg):
        app = self.app
        if self.sender is None:
            return self._no_mail()
        if arg[:3].upper() != "TO:":
            return self._bad(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
        parsed = parse_path(arg[3:])
        if parsed is None:
            return self._bad(b"501 5.1.3 Bad recipient address syntax\r\n")
        if parsed[1]:  # no RCPT parameter is offered (no DSN)
            return self._bad("555 5.5.4 Unsupported option: {}\r\n".format(parsed[1][0]).encode())
        address = parsed[0]
        if self.recipients >= app.config["max_recipients"]:
            self.conn.put(b"452 4.5.3 Error: too many recipients\r\n")
            return
        local, at, domain = address.rpartition("@")
        if not at:
            local = address  # "<postmaster>" with no domain (RFC 5321 §4.5.1)
        elif domain.lower() not in app.config["domains"]:
            if app.config["relay_host"] and (self.auth_user or app.config["relay_networks"]):
                return await self._relay_rcpt(address)
            self.log("relay denied: <{}>".format(address))
            self.reply("550 5.7.1 <{}>: Relay access denied".format(address))
            return
        local = _unquote(local).lower()
        if local == "postmaster":
            mailbox = app.config["postmaster"]
            if not app.users.exists(mailbox):
                app.log.warn(self.NAME, "postmaster mail is kept for {}, which is not a user (set config postmaster)".format(mailbox))
        elif at and app.users.exists(local):
            mailbox = local
        else:
            self.reply("550 5.1.1 <{}>: Recipient address rejected: User unknown".format(address))
            return
        self.recipients += 1
        if self.first_recipient is None:
            self.first_recipient = address
        if mailbox not in self.mailboxes:
            self.mailboxes.append(mailbox)
        self.conn.put(b"250 2.1.5 Ok\r\n")

    def _no_mail(self):
        """Answers RCPT or DATA outside a transaction, as _bad does."""
        if self.mail_refused:
            self.conn.put(_ERR_NO_MAIL)
            return False
        return self._bad(_ERR_NO_MAIL)

    async def cmd_data(self, arg):
        app = self.app
        conn = self.conn
        if arg:
            return self._bad(b"501 5.5.4 Syntax: DATA\r\n")
        if self.sender is None:
            return self._no_mail()
        if not self.mailboxes and not self.remote:
            conn.put(b"554 5.5.1 Error: no valid recipients\r\n")
            return
        if not app.storage_ready():
            conn.put(_ERR_STORAGE)
            return
        queue_id = "{:08X}".format(int.from_bytes(os.urandom(4), "big"))
        trace = self._trace(queue_id)
        # Nothing is allocated between opening the temp file and the try blocks that remove it.
        incoming = app.store.incoming()
        try:
            incoming.write(trace, 0, len(trace))
        except OSError as e:
            incoming.failed(e)  # answered after the data, which is read all the same
        except MemoryError:
            incoming.discard()  # nothing was said yet: the command can be run again
            raise
        conn.put(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        limit = app.config["max_message_size"]
        try:
            size = await receive_data(conn, incoming, limit)
        except BaseException:
            incoming.discard()  # the client went away or timed out: nothing is kept
            raise
        sender = self.sender
        mailboxes = self.mailboxes
        remote = self.remote
        enqueue = self.enqueue
        self._reset()
        if size > limit:
            incoming.discard()
            self.log("message from <{}> too big: {} octets".format(sender, size))
            conn.put(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
            return
        if remote:
            queue_id = await enqueue.data(self, incoming, queue_id, sender, remote, trace.find(b"Received:"), size, mailboxes)
            if queue_id is None or not mailboxes:
                return
        try:
            # The output buffer is empty now (the 354 went out): it holds the copies' chunks.
            # Short before any mailbox got its copy (incoming.kept): the message was received
            # whole, so it is delivered again with the heap relieved, a moment later (the other
            # sessions finish what they allocate), rather than sent again.
            await with_relief(app.relieve_memory, incoming.commit, mailboxes, conn.outbuf, again=PATIENT, possible=lambda: incoming.kept)
        except MemoryError:
            # Nothing was delivered that the log does not name (store.commit); the client
            # hears a temporary error and sends the message again.
            incoming.discard()
            if remote:
                await enqueue.unqueue(self, queue_id)
            app.relieve_memory()
            app.log.warn(self.NAME, "{} delivery {}: not enough memory".format(self.peer, queue_id))
            conn.put(self.NOMEM_REPLY)
            return
        except OSError as e:
            if remote:
                await enqueue.unqueue(self, queue_id)
            app.log.exception(self.NAME, "{} delivery {} failed".format(self.peer, queue_id), e)
            if e.errno == _ENOSPC:
                conn.put(b"452 4.3.1 Insufficient system storage\r\n")
            else:
                conn.put(b"451 4.3.0 Local error in processing\r\n")
            return
        self.log("delivered {} from <{}> to {} ({} octets)".format(queue_id, sender, ",".join(mailboxes), size))
        self.reply("250 2.0.0 Ok: queued as {}".format(queue_id))
        if remote:
            self.log("queued {} for {}".format(queue_id, ",".join(remote)))
            app.relay_kick()

    async def _relay_rcpt(self, address):
        # RCPT of a recipient of another domain: enqueue.py's code is loaded at the transaction's
        # first such recipient and kept by the session, out of sys.modules, for the rest of the
        # transaction (cmd_data queues the message with it). Loaded and unloaded for each RCPT,
        # it left holes among the recipients' strings: at 160k the largest free block fell to
        # ~1 KB after 64 RCPTs, and the list of recipients, doubling to 128 entries, could not
        # grow (a fresh clone's CI saw RCPTs 64-99 refused).
        module = self.enqueue
        if module is None:
            from . import enqueue as module

            unload(module.__name__)
            self.enqueue = module
        return await module.rcpt(self, address)

    def _trace(self, queue_id):
        """The Return-Path and Received header fields (RFC 5321 §4.4) put before the message."""
        # RFC 3848: ESMTP, with S inside TLS and A when authenticated.
        proto = ("ESMTP" if self.esmtp else "SMTP") + ("S" if self.secure else "") + ("A" if self.auth_user else "")
        recipient = "\r\n\tfor <{}>".format(self.first_recipient) if self.recipients == 1 else ""
        return "Return-Path: <{}>\r\nReceived: from {} ({} [{}])\r\n\tby {} (pocketpost) with {} id {}{};\r\n\t{}\r\n".format(
            self.sender,
            self.helo,
            self.peer,
            self.peer,
            self.app.config["hostname"],
            proto,
            queue_id,
            recipient,
            rfc5322_date(int(time.time())),
        ).encode()

    # ---- other commands

    async def cmd_rset(self, arg):
        self._reset()
        self.conn.put(_OK)

    async def cmd_noop(self, arg):
        self.conn.put(_OK)

    async def cmd_quit(self, arg):
        self.conn.put(b"221 2.0.0 Bye\r\n")
        return True

    async def cmd_vrfy(self, arg):
        if not arg:
            return self._bad(b"501 5.5.4 Syntax: VRFY address\r\n")
        # RFC 5321 §3.5.3: do not confirm or deny addresses to strangers.
        self.conn.put(b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n")

    async def cmd_expn(self, arg):
        self.conn.put(b"502 5.5.1 Error: EXPN is not supported\r\n")

    async def cmd_help(self, arg):
        self.conn.put(b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP AUTH STARTTLS\r\n")

    async def cmd_starttls(self, arg):
        conn = self.conn
        if arg:
            return self._bad(b"501 5.5.4 Syntax: STARTTLS\r\n")
        if not self.tls_offered():
            conn.put(b"502 5.5.1 Error: STARTTLS is not available\r\n")
            return
        if not self.esmtp:
            return self._bad(_ERR_NO_EHLO)
        if not self.reserve_tls():
            conn.put(b"454 4.7.0 TLS not available due to temporary reason\r\n")
            return
        conn.put(b"220 2.0.0 Ready to start TLS\r\n")
        await conn.flush()
        self.begin_tls()
        # RFC 3207 §4.2: everything learned before TLS is discarded, the client starts with EHLO.
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self._reset()
        self.log("STARTTLS")

_COMMANDS = {
    "EHLO": SmtpSession.cmd_ehlo,
    "HELO": SmtpSession.cmd_helo,
    "MAIL": SmtpSession.cmd_mail,
    "RCPT": SmtpSession.cmd_rcpt,
    "DATA": SmtpSession.cmd_data,
    "RSET": SmtpSession.cmd_rset,
    "NOOP": SmtpSession.cmd_noop,
    "QUIT": SmtpSession.cmd_quit,
    "VRFY": SmtpSession.cmd_vrfy,
    "EXPN": SmtpSession.cmd_expn,
    "HELP": SmtpSession.cmd_help,
    "AUTH": SmtpSession.cmd_auth,
    "STARTTLS": SmtpSession.cmd_starttls,
}
# Commands that change nothing before their reply (RCPT takes back what it added; DATA: nothing
# before its 354, and no data is read before that): run again after a shortage (Session.command).
_REDO = (SmtpSession.cmd_ehlo, SmtpSession.cmd_rcpt, SmtpSession.cmd_data, SmtpSession.cmd_rset, SmtpSession.cmd_noop, SmtpSession.cmd_vrfy, SmtpSession.cmd_help)
