"""`pocketpost check`: protocol checks of a mail appliance over the network.

The checks send test messages by SMTP to USER@DOMAIN, fetch them back from USER's maildrop by
POP3 and compare them byte for byte, and probe both servers' handling of errors, limits and
deletions. They follow the RFCs (RFC 1939 and RFC 2449 for POP3; RFC 5321, RFC 1870, RFC 2920,
RFC 6152 and RFC 3463 for SMTP), not pocketpost's wording: replies are judged by their +OK/-ERR,
POP3 response codes, SMTP reply codes and enhanced status codes, never by their text. So the same
checks run against a pocketpost board, the simulator, or any other POP3/SMTP pair that delivers
mail for USER@DOMAIN into USER's POP3 maildrop.

Each check ends as one of:

- ``pass``;
- ``fail``: the server broke a rule, or the check could not run because an earlier step failed;
- ``unsupported``: the server lacks an optional feature the check needs (CAPA, PIPELINING, SIZE,
  8BITMIME, a maildrop lock with ``[IN-USE]``, lines over 1000 octets). The RFCs allow this, so
  it is reported as such rather than as a failure; but it is not a pass either, so it makes the
  command exit non-zero unless ``--allow-unsupported`` is given. A pocketpost board supports
  every feature checked, so for pocketpost everything must pass.

The test messages carry a token unique to the run in their Message-ID and Subject. At the end
the check deletes exactly those (each identified by its UIDL and its Message-ID) and verifies
that every other message in the maildrop is still there. Run it while no other client deletes
mail from that maildrop: a message another client deletes meanwhile looks like one we touched.
"""

import base64
import contextlib
import dataclasses
import email.utils
import json
import random
import re
import secrets
import socket
import ssl
import sys
import time

import click

PASS = "pass"
FAIL = "fail"
UNSUPPORTED = "unsupported"

# The checks, in the order they run, with what each verifies (listed by --help).
CHECKS = {
    "smtp-greeting": "220 greeting; EHLO 250 and its extensions; QUIT 221",
    "smtp-bad-commands": "bad or out-of-order commands: 5xx, session in sync",
    "smtp-relay-denied": "RCPT TO outside domains (also source-routed): 5xx",
    "smtp-unknown-user": "RCPT TO an unknown local user: 550",
    "smtp-size": "SIZE advertised; MAIL FROM SIZE over it: 552 (RFC 1870)",
    "smtp-pipelining": "MAIL, RCPT, RCPT, DATA in one write (RFC 2920)",
    "smtp-send": "the test messages are accepted (250 after DATA)",
    "pop3-capa": "CAPA: TOP UIDL USER RESP-CODES PIPELINING SASL",
    "pop3-login": "USER/PASS; the test messages are in the maildrop",
    "pop3-in-use": "a second login meanwhile: -ERR [IN-USE] (RFC 2449)",
    "pop3-pipelining": "commands in one write answered in order (RFC 2449)",
    "pop3-sizes": "STAT = LIST totals; RETR sends LIST's size",
    "content-plain": "a plain message comes back byte-exact",
    "content-dot-lines": "lines of and starting with '.', CRLF.CRLF inside",
    "content-8bit": "8-bit octets with BODY=8BITMIME, byte-exact",
    "content-long-lines": "lines over 1000 octets come back whole",
    "content-large": "a multi-megabyte message, byte-exact",
    "pop3-top": "TOP n m: header, blank line, m body lines",
    "pop3-list-n": "LIST n agrees with LIST; no such message: -ERR",
    "pop3-bad-commands": "bad commands: -ERR, session in sync",
    "pop3-uidl": "unique-ids well-formed, distinct, kept next session",
    "pop3-dele-rset": "DELE hides a message, RSET brings it back",
    "pop3-dele-drop": "DELE, then no QUIT: nothing deleted",
    "pop3-dele-quit": "DELE, then QUIT: gone in the next session",
    "cleanup": "the run's messages deleted, all others untouched",
}

# The envelope sender and From of the test messages (example.org is reserved, RFC 2606).
SENDER = "pocketpost-check@example.org"
# Where the test messages' Message-IDs live (.invalid is reserved, RFC 2606).
MESSAGE_ID_DOMAIN = "pocketpost-check.invalid"
# Size of the large test message, in octets.
DEFAULT_LARGE_SIZE = 3 * 1024 * 1024
# Seconds to wait for mail the SMTP server accepted to show up in the POP3 maildrop, and for
# a maildrop lock to be released after a session ended.
SETTLE_SECONDS = 10.0
# Seconds of silence after which a server that should have nothing more to say is in sync.
QUIET_SECONDS = 0.3
# RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")
# RFC 3463: class.subject.detail at the start of the reply text.
ENHANCED_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?= |$)")
# RFC 5322 §2.2: a field name is printable ASCII but colon, followed by a colon.
HEADER_FIELD = re.compile(rb"[!-9;-~]+:")


class CheckFailed(Exception):
    """A check found the server breaking a rule (or could not run); the message says how."""


class ProtocolError(CheckFailed):
    """The server's reply does not follow the protocol's syntax: the session is out of sync."""


class Unsupported(Exception):
    """The server lacks an optional feature the check needs; the message says which."""


class TlsBusy(CheckFailed):
    """STLS/STARTTLS refused for now (every TLS session the server allows is in use)."""


# How long a new session waits for a TLS place before giving up: a session that just ended
# frees its place a moment after its QUIT.
TLS_PLACE_WAIT = 5.0
TLS_PLACE_RETRY = 0.2


@dataclasses.dataclass
class Target:
    """What to check: the servers' address, the account and its mail domain."""

    host: str
    user: str
    password: str
    domain: str
    pop3_port: int = 110
    smtp_port: int = 25
    # Seconds to wait for any reply.
    timeout: float = 30.0
    large_size: int = DEFAULT_LARGE_SIZE
    # "none"; "starttls": STLS (RFC 2595) and STARTTLS (RFC 3207) on the plain ports; "implicit":
    # TLS from the first byte (RFC 8314, ports 995 and 465).
    tls: str = "none"
    # The CA certificate (PEM) that verifies the server's certificate; None: the system's.
    cafile: str | None = None
    # AUTH PLAIN after EHLO: a submission port (465, 587) takes mail only after it.
    smtp_auth: bool = False

    def tls_context(self):
        """A client context that verifies the server's certificate and name."""
        return ssl.create_default_context(cafile=self.cafile)


@dataclasses.dataclass
class CheckResult:
    name: str
    result: str
    detail: str
    seconds: float


@dataclasses.dataclass
class Report:
    """The outcome of a run; `token` marks the run's test messages (in Subject and Message-ID)."""

    token: str
    results: list

    def passed(self, allow_unsupported=False):
        """True when every check passed (or, with `allow_unsupported`, passed or was unsupported)."""
        accepted = (PASS, UNSUPPORTED) if allow_unsupported else (PASS,)
        return all(r.result in accepted for r in self.results)

    def counts(self):
        return {kind: sum(r.result == kind for r in self.results) for kind in (PASS, FAIL, UNSUPPORTED)}


# ---- wire helpers


class Connection:
    """A TCP connection read line by line; every line keeps its line end."""

    def __init__(self, host, port, timeout):
        self.timeout = timeout
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = bytearray()

    def start_tls(self, context):
        """Continues inside TLS, verifying the server's certificate for the host name."""
        if self.buffer:
            # A server must not send anything between its go-ahead and the handshake.
            raise ProtocolError(f"data before the TLS handshake: {bytes(self.buffer[:80])!r}")
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        except (ssl.SSLError, OSError) as e:
            raise CheckFailed(f"TLS handshake: {e}") from None

    def send(self, data):
        self.sock.sendall(data)

    def readline(self):
        searched = 0  # a long line arrives in many chunks: search only what is new
        while True:
            end = self.buffer.find(b"\n", searched)
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            searched = len(self.buffer)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("the server closed the connection")
            self.buffer += chunk

    def assert_quiet(self, after):
        """Fails when the server sends anything unasked (an extra reply means the session is
        out of sync) within a short time after `after`, the last exchange."""
        self.sock.settimeout(QUIET_SECONDS)
        try:
            extra = bytes(self.buffer) or self.sock.recv(65536)
        except TimeoutError:
            extra = b""
        finally:
            self.sock.settimeout(self.timeout)
        if extra:
            raise ProtocolError(f"unasked data after {after}: {extra[:80]!r}")

    def local_address(self):
        return self.sock.getsockname()[0]

    def close(self):
        self.sock.close()


def stuff(message):
    """`message` (ending in CRLF) as DATA sends it: dot-stuffed, then "." CRLF (RFC 5321 §4.5.2)."""
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


def header_field(message, name):
    """The unfolded value of the first header field `name` of `message`, or None."""
    header = message.split(b"\r\n\r\n", 1)[0]
    for line in re.sub(rb"\r\n[ \t]", b" ", header).split(b"\r\n"):
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name.lower().encode():
            return value.strip().decode("ascii", "replace")
    return None


def compare_content(sent, retrieved):
    """None when `retrieved` is `sent` byte for byte after header field lines the server put
    before it (trace fields, RFC 5321 §4.4: Return-Path, Received; also Delivered-To and the
    like); otherwise a description of where they differ."""
    if retrieved.endswith(sent):
        prepended = retrieved[: len(retrieved) - len(sent)]
        if prepended and not prepended.endswith(b"\r\n"):
            return f"the server joined {prepended[-40:]!r} to the message's first line"
        for i, line in enumerate(prepended.split(b"\r\n")[:-1]):
            if not (HEADER_FIELD.match(line) or (i and line[:1] in (b" ", b"\t"))):
                return f"the server put a line that is not a header field before the message: {line[:80]!r}"
        return None
    first_line = sent[: sent.index(b"\r\n") + 2]
    start = retrieved.find(first_line)
    if start < 0:
        return f"the message's first line {first_line[:60]!r} is not in the {len(retrieved)} octets retrieved"
    got = retrieved[start:]
    at = _first_difference(sent, got)
    line = sent.count(b"\r\n", 0, at) + 1
    return (
        f"differs at octet {at} of {len(sent)} (line {line}; retrieved {len(got)} octets after the "
        f"prepended header): sent {sent[max(0, at - 16):at + 24]!r}, got {got[max(0, at - 16):at + 24]!r}"
    )


def _first_difference(a, b):
    """The first offset where `a` and `b` differ (their common length when one is a prefix)."""
    step = 4096
    at = 0
    while a[at:at + step] == b[at:at + step] and at < min(len(a), len(b)):
        at += step
    while at < min(len(a), len(b)) and a[at] == b[at]:
        at += 1
    return at


def top_of(message, lines):
    """What TOP n `lines` returns for `message` (RFC 1939 §7): the header, the blank line after
    it and the first `lines` lines of the body; the whole message when the body is shorter."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    position = end + 4
    for _ in range(lines):
        line_end = message.find(b"\r\n", position)
        if line_end < 0:
            return message
        position = line_end + 2
    return message[:position]


# ---- SMTP client


@dataclasses.dataclass
class Reply:
    """An SMTP reply (RFC 5321 §4.2): a code and its text lines."""

    code: int
    lines: list

    def __str__(self):
        return f"{self.code} {self.lines[0]}".rstrip() + (" ..." if len(self.lines) > 1 else "")

    def enhanced(self):
        """The enhanced status code (RFC 3463) the reply text starts with, or None."""
        match = ENHANCED_CODE.match(self.lines[0])
        return match.group(0) if match else None


def _with_tls_place(connect):
    """Runs `connect()` (which makes a client), again while the server has no TLS place free,
    for up to TLS_PLACE_WAIT seconds; then raises its TlsBusy."""
    deadline = time.monotonic() + TLS_PLACE_WAIT
    while True:
        try:
            return connect()
        except TlsBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(TLS_PLACE_RETRY)


class SmtpClient:
    def __init__(self, target):
        self.extensions = {}
        self.conn = None
        _with_tls_place(lambda: self._connect(target))

    def _connect(self, target):
        self.conn = Connection(target.host, target.smtp_port, target.timeout)
        if target.tls == "implicit":
            self.conn.start_tls(target.tls_context())
        greeting = self.read_reply()
        if greeting.code != 220:
            raise CheckFailed(f"greeting: expected 220, got {greeting}")
        if target.tls == "starttls":
            self.ehlo()
            if "STARTTLS" not in self.extensions:
                raise CheckFailed("EHLO does not offer STARTTLS (RFC 3207)")
            reply = self.command("STARTTLS")
            if reply.code == 454:
                self.conn.close()
                raise TlsBusy(f"STARTTLS: {reply} (every TLS session the server allows is in use)")
            if reply.code != 220:
                raise CheckFailed(f"STARTTLS: expected 220, got {reply}")
            self.conn.start_tls(target.tls_context())
            self.extensions = {}  # forgotten with everything else from before TLS (RFC 3207 §4.2)

    def authenticate(self, user, password):
        """AUTH PLAIN (RFC 4954) after EHLO."""
        if "PLAIN" not in self.extensions.get("AUTH", "").upper().split():
            raise CheckFailed(f"EHLO offers no AUTH PLAIN (AUTH {self.extensions.get('AUTH', 'absent')})")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        reply = self.command("AUTH PLAIN " + token)
        if reply.code != 235:
            raise CheckFailed(f"AUTH PLAIN as {user}: expected 235, got {reply}")

    def read_reply(self):
        code = None
        lines = []
        while True:
            text = self.conn.readline().rstrip(b"\r\n").decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                raise ProtocolError(f"malformed SMTP reply line {text[:80]!r}")
            if code is not None and int(text[:3]) != code:
                raise ProtocolError(f"the lines of one reply have different codes: {code}, {text[:3]}")
            code = int(text[:3])
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(code, lines)

    def command(self, line):
        self.conn.send(line.encode() + b"\r\n")
        return self.read_reply()

    def expect(self, reply, code_class, what):
        """Fails unless `reply` is of class `code_class` (2, 3, 4 or 5) and, when the server
        advertises ENHANCEDSTATUSCODES, starts with an enhanced code of the same class
        (RFC 2034 §3)."""
        if reply.code // 100 != code_class:
            raise CheckFailed(f"{what}: expected {code_class}xx, got {reply}")
        if "ENHANCEDSTATUSCODES" in self.extensions and code_class != 3:
            enhanced = reply.enhanced()
            if enhanced is None or enhanced[0] != str(code_class):
                raise CheckFailed(
                    f"{what}: {reply} has no enhanced status code of class {code_class}, "
                    "though EHLO advertises ENHANCEDSTATUSCODES (RFC 2034)"
                )
        return reply

    def ehlo(self):
        host = self.conn.local_address()
        literal = f"[IPv6:{host}]" if ":" in host else f"[{host}]"  # RFC 5321 §4.1.3
        reply = self.command("EHLO " + literal)
        if reply.code != 250:
            raise CheckFailed(f"EHLO: expected 250, got {reply}")
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params.strip()
        return reply

    def size_limit(self):
        """The fixed message size limit EHLO advertised (RFC 1870), 0 for none."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() else 0

    def mail_from_line(self, size=None, eight_bit=False):
        line = f"MAIL FROM:<{SENDER}>"
        if size is not None and "SIZE" in self.extensions:
            line += f" SIZE={size}"
        if eight_bit:
            line += " BODY=8BITMIME"
        return line

    def send_data(self, message):
        """Sends the content of a DATA command (after its 354) and returns the final reply."""
        self.conn.send(stuff(message))
        return self.read_reply()

    def quit(self):
        reply = self.command("QUIT")
        self.expect(reply, 2, "QUIT")
        if reply.code != 221:
            raise CheckFailed(f"QUIT: expected 221, got {reply}")

    def close(self):
        self.conn.close()


# ---- POP3 client


@dataclasses.dataclass
class Status:
    """A POP3 status line (RFC 1939 §3)."""

    ok: bool
    text: str

    def response_code(self):
        """The RFC 2449 response code in brackets after the status indicator, or None."""
        match = re.match(r"[+-]\S+ \[([^\]]+)\]", self.text)
        return match.group(1).upper() if match else None


class Pop3Client:
    def __init__(self, target):
        self.conn = None
        _with_tls_place(lambda: self._connect(target))

    def _connect(self, target):
        self.conn = Connection(target.host, target.pop3_port, target.timeout)
        if target.tls == "implicit":
            self.conn.start_tls(target.tls_context())
        greeting = self.read_status()
        if not greeting.ok:
            raise CheckFailed(f"greeting: {greeting.text}")
        if target.tls == "starttls":
            status = self.command("STLS")
            if not status.ok and status.response_code() == "SYS/TEMP":
                self.conn.close()
                raise TlsBusy(f"STLS: {status.text} (every TLS session the server allows is in use)")
            if not status.ok:
                raise CheckFailed(f"STLS (RFC 2595): {status.text}")
            self.conn.start_tls(target.tls_context())

    def read_status(self):
        text = self.conn.readline().rstrip(b"\r\n").decode("utf-8", "replace")
        if text.startswith("+OK") and text[3:4] in ("", " "):
            return Status(True, text)
        if text.startswith("-ERR") and text[4:5] in ("", " "):
            return Status(False, text)
        raise ProtocolError(f"status line is neither +OK nor -ERR: {text[:80]!r}")

    def command(self, line):
        self.conn.send(line.encode() + b"\r\n")
        return self.read_status()

    def ok(self, line):
        """Sends `line`; returns the +OK status line or fails naming the command."""
        status = self.command(line)
        if not status.ok:
            raise CheckFailed(f"{line}: {status.text}")
        return status.text

    def read_body(self):
        """The body of a multi-line response, un-stuffed (RFC 1939 §3), without its "." line."""
        body = bytearray()
        while True:
            line = self.conn.readline()
            if line == b".\r\n":
                return bytes(body)
            body += line[1:] if line.startswith(b".") else line

    def multiline(self, line):
        self.ok(line)
        return self.read_body()

    def login(self, user, password):
        """USER and PASS; returns the PASS status (which may be -ERR)."""
        self.ok("USER " + user)
        return self.command("PASS " + password)

    def quit(self):
        self.ok("QUIT")
        self.conn.close()

    def close(self):
        self.conn.close()


def parse_listing(body, what):
    """{message number: second field} of a LIST or UIDL multi-line listing."""
    listing = {}
    for line in body.decode("ascii", "replace").split("\r\n")[:-1]:
        fields = line.split(" ")
        if len(fields) < 2 or not fields[0].isdigit():
            raise ProtocolError(f"{what} listing line {line[:80]!r}")
        listing[int(fields[0])] = fields[1]
    return listing


def parse_stat(text):
    """(messages, octets) from a STAT reply "+OK nn mm"."""
    fields = text.split(" ")
    if len(fields) < 3 or not fields[1].isdigit() or not fields[2].isdigit():
        raise ProtocolError(f"STAT reply {text[:80]!r} is not '+OK messages octets'")
    return int(fields[1]), int(fields[2])


# ---- the test messages


@dataclasses.dataclass
class CheckMessage:
    name: str
    data: bytes
    eight_bit: bool = False
    # The reply to DATA's content, or the refusal that ended the transaction earlier.
    reply: Reply = None
    # Why the message was not sent.
    not_sent: str = None

    @property
    def message_id(self):
        return header_field(self.data, "Message-ID")


def build_messages(token, user, domain, large_size):
    """The run's test messages by name; each ends in CRLF."""

    def message(name, body, charset="us-ascii", encoding="7bit"):
        header = (
            f"From: pocketpost check <{SENDER}>\r\n"
            f"To: <{user}@{domain}>\r\n"
            f"Subject: pocketpost check {token} {name}\r\n"
            f"Message-ID: <{token}.{name}@{MESSAGE_ID_DOMAIN}>\r\n"
            f"Date: {email.utils.formatdate()}\r\n"
            "MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n"
            "\r\n"
        ).encode()
        return header + body

    dot_lines = (
        b".a line starting with a dot (stuffed on the wire)\r\n"
        b"..two dots\r\n"
        b"...\r\n"
        b".\r\n"
        b"..\r\n"
        b"\r\n"
        b"The next line holds a single dot, so this content contains CRLF.CRLF:\r\n"
        b".\r\n"
        b". a dot and a space\r\n"
        b".\ta dot and a tab\r\n"
        b"a line ending with a dot.\r\n"
        b" .a space then a dot\r\n"
        b"The last line is a single dot too:\r\n"
        b".\r\n"
    )
    octets = bytes(b for b in range(1, 256) if b not in (10, 13))  # RFC 2045 §2.8: no NUL, bare CR or LF
    eight_bit = (
        "Grüße aus Köln: ½ € £ ¥ — «guillemets» — 日本語 — ελληνικά — 📬\r\n".encode()
        + b"".join(octets[i:i + 64] + b"\r\n" for i in range(0, len(octets), 64))
        + b".\xff\xfe a dot, then 8-bit octets\r\n"
    )
    long_lines = b"".join(
        _filler(length, first=b"." if length == 1025 else b"") + b"\r\n"
        for length in (998, 999, 1000, 1001, 1023, 1024, 1025, 2047, 4096, 20000)
    )
    messages = {
        "plain": message("plain", b"This message was sent by `pocketpost check`; it deletes it when done.\r\n"),
        "dot-lines": message("dot-lines", dot_lines),
        "8bit": message("8bit", eight_bit, charset="utf-8", encoding="8bit"),
        "long-lines": message("long-lines", long_lines),
        "disposable": message("disposable", b"DELE and QUIT remove this one.\r\n"),
    }
    header = message("large", b"")
    messages["large"] = header + _large_body(large_size - len(header))
    return {
        name: CheckMessage(name, data, eight_bit=(name == "8bit"))
        for name, data in messages.items()
    }


def _filler(length, first=b""):
    """A printable line of `length` octets that says how long it is, starting with `first`."""
    text = first + f"[{length} octets]".encode()
    pattern = b" 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return (text + pattern * (length // len(pattern) + 1))[:length]


def _large_body(size):
    """`size` octets of CRLF lines of varied lengths, many starting with a dot, some just a dot,
    so that stuffing meets every buffer boundary; the same for every run."""
    rng = random.Random(1939)
    printable = bytes(32 + b % 95 for b in range(256))
    table = bytes.maketrans(bytes(range(256)), printable)
    lines = []
    left = size
    while left > 1000:  # the last line takes up the rest: at most 998 octets and its CRLF
        kind = rng.random()
        if kind < 0.02:
            line = b"."
        elif kind < 0.04:
            line = b""
        else:
            line = rng.randbytes(rng.randrange(1, 200)).translate(table)
            if kind < 0.2:
                line = b"." + line
        lines.append(line + b"\r\n")
        left -= len(line) + 2
    lines.append(b"." * 3 + b"x" * (left - 5) + b"\r\n")
    return b"".join(lines)


# ---- the run


class CheckRun:
    """One run of the checks against a target. The POP3 checks share sessions as a client
    would: the first session finds and retrieves the test messages, later ones see what
    DELE, RSET, QUIT and a dropped connection left behind."""

    def __init__(self, target, progress=None):
        self.target = target
        self.token = "ppc" + secrets.token_hex(6)
        self.progress = progress or (lambda index, total, name, result: None)
        self.results = []
        self.messages = build_messages(self.token, target.user, target.domain, target.large_size)
        self.capabilities = None  # CAPA's capabilities by name, once CAPA answered
        # The current POP3 session and what it lists.
        self.pop = None
        self.sizes = {}  # message number: size (LIST)
        self.uidls = {}  # message number: unique-id (UIDL), empty when UIDL is refused
        self.uidl_refusal = None  # UIDL's -ERR text, when it is refused
        self.top_works = True  # False once TOP was refused: identify messages by RETR
        self.login_refused = None  # PASS's -ERR text once a login was refused
        self.numbers = {}  # test message name: its number in the current session
        # From the first session.
        self.first_uidls = {}  # test message name: unique-id
        self.other_uidls = set()  # unique-ids of the messages that are not test messages
        self.others_count = 0
        self.retrieved = {}  # test message name: the message as RETR sent it, un-stuffed

    def run(self):
        steps = [getattr(self, "check_" + name.replace("-", "_")) for name in CHECKS]
        try:
            for index, (name, step) in enumerate(zip(CHECKS, steps), 1):
                self.progress(index, len(CHECKS), name, None)
                result = self._run_check(name, step)
                self.results.append(result)
                self.progress(index, len(CHECKS), name, result)
        finally:
            self._close_session()
        return Report(self.token, self.results)

    def _run_check(self, name, step):
        started = time.monotonic()
        try:
            detail = step()
            result = PASS
        except Unsupported as e:
            result, detail = UNSUPPORTED, str(e)
        except ProtocolError as e:
            result, detail = FAIL, str(e)
            self._close_session()  # out of sync: later checks start a new session
        except CheckFailed as e:
            result, detail = FAIL, str(e)
        except TimeoutError:
            result, detail = FAIL, f"no reply within {self.target.timeout:g} s"
            self._close_session()
        except OSError as e:
            result, detail = FAIL, f"connection failed: {e}"
            self._close_session()
        return CheckResult(name, result, detail, round(time.monotonic() - started, 3))

    # ---- SMTP

    @contextlib.contextmanager
    def smtp(self):
        """An SMTP session after EHLO."""
        client = SmtpClient(self.target)
        try:
            client.ehlo()
            if self.target.smtp_auth:
                client.authenticate(self.target.user, self.target.password)
            yield client
        finally:
            client.close()

    @property
    def recipient(self):
        return f"{self.target.user}@{self.target.domain}"

    def check_smtp_greeting(self):
        with self.smtp() as smtp:
            smtp.quit()
        listed = " ".join(f"{k} {v}".strip() for k, v in sorted(smtp.extensions.items()))
        return f"EHLO extensions: {listed or 'none'}"

    def check_smtp_bad_commands(self):
        # RFC 5321 §4.2.4 (unknown command: 500), §4.1.4 and §3.3 (bad sequence: 503),
        # §4.1.1.11 and RFC 1869 (bad parameters: 501, 555). Only the class is required here.
        bad = [
            ("unknown command", "XYZZY pocketpost-check"),
            ("RCPT before MAIL", f"RCPT TO:<{self.recipient}>"),
            ("DATA before MAIL", "DATA"),
            ("MAIL without FROM:", "MAIL"),
            ("MAIL with an unknown parameter", f"MAIL FROM:<{SENDER}> X-POCKETPOST-CHECK-UNKNOWN=1"),
        ]
        answers = []
        with self.smtp() as smtp:
            for label, line in bad:
                answers.append(f"{label} -> {smtp.expect(smtp.command(line), 5, line).code}")
                smtp.expect(smtp.command("NOOP"), 2, f"NOOP after {line!r}")
            smtp.conn.assert_quiet("the bad commands")
            smtp.expect(smtp.command(smtp.mail_from_line()), 2, "MAIL FROM after the bad commands")
            smtp.expect(smtp.command("RSET"), 2, "RSET")
            smtp.quit()
        return "; ".join(answers) + "; NOOP -> 250 after each"

    def check_smtp_relay_denied(self):
        outside = [
            f"check-{self.token}@example.com",
            f"check-{self.token}@example.net",
            # A source route through this server to an outside address (RFC 5321 §3.6.1,
            # Appendix C: the route is ignored, leaving an outside recipient).
            f"@{self.target.domain}:check-{self.token}@example.com",
        ]
        answers = []
        with self.smtp() as smtp:
            smtp.expect(smtp.command(smtp.mail_from_line()), 2, "MAIL FROM")
            for address in outside:
                reply = smtp.command(f"RCPT TO:<{address}>")
                if reply.code // 100 == 2:
                    smtp.command("RSET")  # never send DATA: nothing may go out
                    raise CheckFailed(f"open relay: RCPT TO:<{address}> accepted ({reply})")
                smtp.expect(reply, 5, f"RCPT TO:<{address}>")
                answers.append(f"<{address}> -> {reply}")
            smtp.expect(smtp.command("RSET"), 2, "RSET")
            smtp.quit()
        return "; ".join(answers)

    def check_smtp_unknown_user(self):
        address = f"no-such-user-{self.token}@{self.target.domain}"
        with self.smtp() as smtp:
            smtp.expect(smtp.command(smtp.mail_from_line()), 2, "MAIL FROM")
            reply = smtp.expect(smtp.command(f"RCPT TO:<{address}>"), 5, f"RCPT TO:<{address}>")
            if reply.code != 550:  # RFC 5321 §3.3: a known non-deliverable address gets 550
                raise CheckFailed(f"RCPT TO:<{address}>: expected 550, got {reply}")
            smtp.expect(smtp.command("RSET"), 2, "RSET")
            smtp.quit()
        return f"<{address}> -> {reply}"

    def check_smtp_size(self):
        with self.smtp() as smtp:
            if "SIZE" not in smtp.extensions:
                raise Unsupported("EHLO does not advertise SIZE (RFC 1870)")
            limit = smtp.size_limit()
            if not limit:
                raise Unsupported("EHLO advertises SIZE without a fixed limit: no maximum to check")
            over = smtp.command(smtp.mail_from_line(size=limit + 1))
            smtp.expect(over, 5, f"MAIL FROM SIZE={limit + 1}")
            if over.code != 552:  # RFC 1870 §6.1
                raise CheckFailed(f"MAIL FROM SIZE={limit + 1}: expected 552, got {over}")
            smtp.expect(smtp.command("RSET"), 2, "RSET")
            smtp.expect(smtp.command(smtp.mail_from_line(size=limit)), 2, f"MAIL FROM SIZE={limit} (the limit)")
            smtp.expect(smtp.command("RSET"), 2, "RSET")
            smtp.quit()
        return f"limit {limit} octets; SIZE={limit + 1} -> {over}"

    def check_smtp_pipelining(self):
        message = self.messages["plain"]
        outside = f"check-{self.token}@example.com"
        with self.smtp() as smtp:
            if "PIPELINING" not in smtp.extensions:
                raise Unsupported("EHLO does not advertise PIPELINING (RFC 2920); the plain message goes unpipelined")
            # RFC 2920 §3.1: DATA may end a group; a refused RCPT in it must not break the rest.
            group = [
                smtp.mail_from_line(size=len(message.data)),
                f"RCPT TO:<{outside}>",
                f"RCPT TO:<{self.recipient}>",
                "DATA",
            ]
            smtp.conn.send("".join(line + "\r\n" for line in group).encode())
            replies = [smtp.read_reply() for _ in group]
            for line, reply, code_class in zip(group, replies, (2, 5, 2, 3)):
                smtp.expect(reply, code_class, f"{line} (pipelined)")
            # Only now is the message sent: if the group failed, smtp-send sends it unpipelined.
            message.reply = smtp.send_data(message.data)
            smtp.expect(message.reply, 2, "end of data (pipelined)")
            smtp.quit()
        return ", ".join(str(r.code) for r in replies) + f" in one exchange; message accepted: {message.reply}"

    def check_smtp_send(self):
        refused = []
        sent = 0
        with self.smtp() as smtp:
            limit = smtp.size_limit()
            for message in self.messages.values():
                if message.reply is not None:
                    continue  # sent already (pipelined)
                if message.eight_bit and "8BITMIME" not in smtp.extensions:
                    message.not_sent = "EHLO does not advertise 8BITMIME (RFC 6152): 8-bit content may not be sent"
                    continue
                if limit and len(message.data) > limit:
                    message.not_sent = f"the message's {len(message.data)} octets exceed the advertised SIZE {limit}"
                    continue
                message.reply = self._send(smtp, message)
                if message.reply.code // 100 == 2:
                    sent += len(message.data)
                elif not self._long_lines_refused(message):
                    refused.append(f"{message.name}: {message.reply}")
            smtp.quit()
        if refused:
            raise CheckFailed("refused: " + "; ".join(refused))
        accepted = [m.name for m in self.messages.values() if m.reply is not None and m.reply.code // 100 == 2]
        return f"{len(accepted)} messages accepted ({sent} octets in this session): {', '.join(accepted)}"

    def _send(self, smtp, message):
        """One mail transaction; returns the reply that ended it."""
        for line, code_class in (
            (smtp.mail_from_line(len(message.data), message.eight_bit), 2),
            (f"RCPT TO:<{self.recipient}>", 2),
            ("DATA", 3),
        ):
            reply = smtp.command(line)
            if reply.code // 100 != code_class:
                smtp.expect(smtp.command("RSET"), 2, "RSET")
                return reply
            smtp.expect(reply, code_class, line)
        return smtp.send_data(message.data)

    def _long_lines_refused(self, message):
        # RFC 5321 §4.5.3.1.6 limits a line to 1000 octets and lets a server refuse longer
        # ones: a permanent refusal of that message is a missing feature, not a fault.
        return message.name == "long-lines" and message.reply.code // 100 == 5

    # ---- POP3 sessions

    def _close_session(self):
        if self.pop is not None:
            self.pop.close()
            self.pop = None

    def new_session(self):
        """Logs in on a new connection (waiting while the maildrop is still locked by a session
        that just ended) and reads LIST and UIDL. Returns the PASS status line."""
        self._close_session()
        if self.login_refused is not None:
            raise CheckFailed(f"not run: the login was refused ({self.login_refused})")
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            pop = Pop3Client(self.target)
            try:
                status = pop.login(self.target.user, self.target.password)
            except BaseException:
                pop.close()
                raise
            if status.ok:
                break
            pop.close()
            if status.response_code() != "IN-USE":
                # Trying again with the same password would only earn a lockout.
                self.login_refused = status.text
            if status.response_code() != "IN-USE" or time.monotonic() > deadline:
                raise CheckFailed(f"login as {self.target.user}: {status.text}")
            time.sleep(0.2)
        self.pop = pop
        self.sizes = {n: _number(size, "LIST") for n, size in parse_listing(pop.multiline("LIST"), "LIST").items()}
        uidl = pop.command("UIDL")
        if uidl.ok:
            self.uidls = parse_listing(pop.read_body(), "UIDL")
            self.uidl_refusal = None
        else:
            self.uidls = {}
            self.uidl_refusal = uidl.text
        self.numbers = {}
        return status.text

    def session(self):
        """The current POP3 session, or a new one with the test messages located."""
        if self.pop is None:
            self.new_session()
            self.locate(self.sent_names())
        return self.pop

    def sent_names(self):
        """The test messages the SMTP server accepted."""
        return [m.name for m in self.messages.values() if m.reply is not None and m.reply.code // 100 == 2]

    def number_of(self, name):
        """The number of test message `name` in the current session."""
        self.session()
        if name not in self.numbers:
            raise CheckFailed(f"the {name} test message is not in the maildrop (see pop3-login)")
        return self.numbers[name]

    def message_id(self, n):
        """The Message-ID of message `n`, read with TOP n 0 (RETR when TOP is refused)."""
        if self.top_works:
            status = self.pop.command(f"TOP {n} 0")
            if status.ok:
                return header_field(self.pop.read_body(), "Message-ID")
            self.top_works = False
        return header_field(self.pop.multiline(f"RETR {n}"), "Message-ID")

    def locate(self, names):
        """Finds the test messages `names` in the current session: {name: number}, also kept in
        self.numbers. A message whose unique-id from the first session is listed must still
        carry its Message-ID; one whose unique-id is no longer listed is gone. Others are
        searched by Message-ID from the newest message back."""
        by_uid = {uid: n for n, uid in self.uidls.items()}
        found = {}
        search = []
        for name in names:
            uid = self.first_uidls.get(name)
            if uid is None or not self.uidls:
                search.append(name)
            elif uid in by_uid:
                n = by_uid[uid]
                if self.message_id(n) != self.messages[name].message_id:
                    raise CheckFailed(f"unique-id {uid} now names another message than {name} (RFC 1939 §7)")
                found[name] = n
        wanted = {self.messages[name].message_id: name for name in search}
        for n in sorted(self.sizes, reverse=True):
            if not wanted:
                break
            if n not in found.values():
                name = wanted.pop(self.message_id(n), None)
                if name is not None:
                    found[name] = n
        self.numbers = found
        return found

    # ---- POP3 checks

    def check_pop3_capa(self):
        pop = Pop3Client(self.target)
        try:
            status = pop.command("CAPA")
            if not status.ok:
                raise Unsupported(f"CAPA refused (RFC 2449 is optional): {status.text}")
            lines = pop.read_body().decode("ascii", "replace").split("\r\n")[:-1]
            pop.quit()
        finally:
            pop.close()
        self.capabilities = {line.split(" ")[0].upper(): line for line in lines}
        missing = [c for c in ("TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "SASL") if c not in self.capabilities]
        if missing:
            raise Unsupported(f"CAPA lacks {', '.join(missing)}: {' | '.join(lines)}")
        return " | ".join(lines)

    def check_pop3_login(self):
        names = self.sent_names()
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            status = self.new_session()
            found = self.locate(names)
            if len(found) == len(names) or time.monotonic() > deadline:
                break
            self.pop.quit()  # mail the server accepted may still be on its way to the maildrop
            time.sleep(0.5)
        self.first_uidls = {name: self.uidls[n] for name, n in found.items() if n in self.uidls}
        ours = set(found.values())
        self.other_uidls = {uid for n, uid in self.uidls.items() if n not in ours}
        self.others_count = len(self.sizes) - len(ours)
        missing = sorted(set(names) - set(found))
        if missing:
            raise CheckFailed(f"{', '.join(missing)} not in the maildrop {SETTLE_SECONDS:g} s after SMTP accepted them")
        return f"{status}; {len(self.sizes)} messages, {len(found)} of them from this run"

    def check_pop3_in_use(self):
        first = self.session()  # holds the maildrop
        # Twice: a refused login must not release the first session's lock when it ends.
        for attempt in ("second", "third"):
            try:
                status = self._login_elsewhere()
            except TlsBusy as e:
                raise Unsupported(
                    f"a second session cannot have TLS while the first holds it: {e}; allow two TLS "
                    "sessions (pocketpost config set tls_max_sessions 2) to check the lock"
                ) from None
            if status.ok:
                if attempt == "second":
                    raise Unsupported("no exclusive lock: a second session logged in while the first held the maildrop")
                raise CheckFailed("the refused second login released the lock: a third session logged in")
            if status.response_code() != "IN-USE":
                if self.capabilities is None or "RESP-CODES" not in self.capabilities:
                    raise Unsupported(
                        f"{attempt} login refused without [IN-USE] (no RESP-CODES in CAPA): {status.text}"
                    )
                raise CheckFailed(f"{attempt} login: expected -ERR [IN-USE] (RFC 2449 §8.1.2), got {status.text}")
        first.ok("NOOP")
        return f"{status.text} (twice); the first session carries on"

    def _login_elsewhere(self):
        """Logs in on another connection and ends it (with QUIT if the login worked); returns
        the PASS status."""
        other = Pop3Client(self.target)
        try:
            status = other.login(self.target.user, self.target.password)
            if status.ok:
                other.quit()
        finally:
            other.close()
        return status

    def check_pop3_pipelining(self):
        if self.capabilities is None or "PIPELINING" not in self.capabilities:
            raise Unsupported("CAPA does not list PIPELINING")
        plain = self.number_of("plain")
        # As a client fetching everything at once would: every test message, the large one
        # included, then more commands behind it.
        retrieve = sorted(self.numbers.items(), key=lambda item: item[1])
        top = [f"TOP {plain} 0"] if self.top_works else []
        lines = ["STAT", f"LIST {plain}"] + [f"RETR {n}" for _, n in retrieve] + top + ["NOOP"]
        self.pop.conn.send("".join(line + "\r\n" for line in lines).encode())
        replies = {}
        for line in lines:
            status = self.pop.read_status()
            if not status.ok:
                raise CheckFailed(f"{line} (pipelined): {status.text}")
            replies[line] = self.pop.read_body() if line.startswith(("RETR", "TOP")) else status.text
        self.pop.conn.assert_quiet("the pipelined commands")
        if parse_stat(replies["STAT"])[0] != len(self.sizes):
            raise CheckFailed(f"STAT (pipelined): {replies['STAT']}, LIST lists {len(self.sizes)} messages")
        list_reply = replies[f"LIST {plain}"]
        if list_reply.split(" ")[1:3] != [str(plain), str(self.sizes[plain])]:
            raise CheckFailed(f"LIST {plain} (pipelined): {list_reply}, the listing says {plain} {self.sizes[plain]}")
        for name, n in retrieve:
            body = replies[f"RETR {n}"]
            if len(body) != self.sizes[n] or header_field(body, "Message-ID") != self.messages[name].message_id:
                raise CheckFailed(
                    f"RETR {n} (pipelined) sent {len(body)} octets, not the {name} test message of {self.sizes[n]}"
                )
        if top and replies[top[0]] != top_of(replies[f"RETR {plain}"], 0):
            raise CheckFailed(f"TOP {plain} 0 (pipelined) is not the header RETR {plain} sent")
        return f"{len(lines)} commands in one write ({', '.join(lines)}): answered in order"

    def check_pop3_sizes(self):
        pop = self.session()
        count, octets = parse_stat(pop.ok("STAT"))
        listed = (len(self.sizes), sum(self.sizes.values()))
        if (count, octets) != listed:
            raise CheckFailed(f"STAT says {count} messages, {octets} octets; LIST lists {listed[0]}, {listed[1]}")
        wrong = []
        for name, n in self.numbers.items():
            self.retrieved[name] = pop.multiline(f"RETR {n}")
            if len(self.retrieved[name]) != self.sizes[n]:
                wrong.append(f"{name} (message {n}): LIST says {self.sizes[n]}, RETR sent {len(self.retrieved[name])}")
        if wrong:
            raise CheckFailed("octets after un-stuffing differ from LIST (RFC 1939 §11): " + "; ".join(wrong))
        return f"STAT {count} {octets} = LIST; RETR sizes = LIST for {len(self.numbers)} test messages"

    def _content(self, name):
        message = self.messages[name]
        if message.not_sent is not None:
            raise Unsupported(message.not_sent)
        if message.reply is None:
            raise CheckFailed("not sent (see smtp-send)")
        if message.reply.code // 100 != 2:
            if self._long_lines_refused(message):
                raise Unsupported(f"lines over 1000 octets refused (RFC 5321 §4.5.3.1.6 allows it): {message.reply}")
            raise CheckFailed(f"SMTP refused it: {message.reply}")
        if name not in self.retrieved:
            raise CheckFailed("not retrieved (see pop3-login and pop3-sizes)")
        difference = compare_content(message.data, self.retrieved[name])
        if difference:
            raise CheckFailed(difference)
        prepended = len(self.retrieved[name]) - len(message.data)
        return f"{len(message.data)} octets byte-exact (after {prepended} octets of trace header)"

    def check_content_plain(self):
        return self._content("plain")

    def check_content_dot_lines(self):
        return self._content("dot-lines")

    def check_content_8bit(self):
        return self._content("8bit")

    def check_content_long_lines(self):
        return self._content("long-lines")

    def check_content_large(self):
        return self._content("large")

    def check_pop3_top(self):
        # Lines starting with dots, lines longer than a server's buffers, and a cut deep into
        # a large message; 1000000 lines is more than the body has: the whole message.
        cases = [("dot-lines", 0), ("dot-lines", 3), ("dot-lines", 1000000), ("long-lines", 5), ("large", 2000)]
        done = []
        for name, lines in cases:
            if name not in self.retrieved:
                continue  # not delivered or not retrieved: reported by its content check
            n = self.number_of(name)
            status = self.pop.command(f"TOP {n} {lines}")
            if not status.ok:
                if self.capabilities is not None and "TOP" not in self.capabilities:
                    raise Unsupported(f"TOP refused and not in CAPA (RFC 1939 makes it optional): {status.text}")
                raise CheckFailed(f"TOP {n} {lines}: {status.text}")
            got = self.pop.read_body()
            expected = top_of(self.retrieved[name], lines)
            if got != expected:
                raise CheckFailed(f"TOP {n} {lines} ({name}): {compare_content(expected, got) or 'extra octets'}")
            done.append(f"TOP {n} {lines}")
        if not done:
            raise CheckFailed("no test message was retrieved to compare TOP with")
        return ", ".join(done) + ": the header, the blank line and the first lines of RETR's message"

    def check_pop3_list_n(self):
        pop = self.session()
        for n in self.numbers.values():
            text = pop.ok(f"LIST {n}")
            if text.split(" ")[1:3] != [str(n), str(self.sizes[n])]:
                raise CheckFailed(f"LIST {n}: {text!r}, the listing says '{n} {self.sizes[n]}'")
        beyond = max(self.sizes, default=0) + 1
        status = pop.command(f"LIST {beyond}")
        if status.ok:
            raise CheckFailed(f"LIST {beyond} (no such message): {status.text}")
        return f"LIST n agrees for {len(self.numbers)} messages; LIST {beyond} -> {status.text}"

    def check_pop3_bad_commands(self):
        pop = self.session()
        beyond = max(self.sizes, default=0) + 1
        n = min(self.sizes, default=1)
        # RFC 1939 §3: unknown commands, bad arguments and commands of the wrong state get -ERR.
        bad = ("XYZZY", "RETR", "RETR one", f"RETR {beyond}", "LIST 0", f"TOP {n}", "DELE", f"USER {self.target.user}")
        for line in bad:
            status = pop.command(line)
            if status.ok:
                raise CheckFailed(f"{line} (TRANSACTION state): {status.text}")
            pop.ok("NOOP")
        pop.conn.assert_quiet("the bad commands")
        # The AUTHORIZATION state, on a new connection that does not log in. The session ends
        # first (dropped: nothing was marked): a board may allow only one TLS session at once.
        self._close_session()
        other = Pop3Client(self.target)
        try:
            for line in ("STAT", "RETR 1", "PASS before-user"):
                status = other.command(line)
                if status.ok:
                    raise CheckFailed(f"{line} (AUTHORIZATION state): {status.text}")
            other.quit()
        finally:
            other.close()
        return "-ERR for 8 bad commands when logged in and 3 before; NOOP +OK after each; no extra replies"

    def check_pop3_uidl(self):
        if not self.first_uidls:
            if self.capabilities is not None and "UIDL" not in self.capabilities and self.uidl_refusal:
                raise Unsupported(f"UIDL refused and not in CAPA (RFC 1939 makes it optional): {self.uidl_refusal}")
            raise CheckFailed(f"no unique-ids from the first session: {self.uidl_refusal or 'see pop3-login'}")
        uids = list(self.uidls.values())
        bad = [uid for uid in uids if not UNIQUE_ID.fullmatch(uid)]
        if bad:
            raise CheckFailed(f"malformed unique-ids (RFC 1939 §7: 1-70 octets 0x21-0x7E): {bad[:3]}")
        if len(set(uids)) != len(uids):
            raise CheckFailed("two messages share a unique-id")
        self.new_session()  # the second session
        found = self.locate(list(self.first_uidls))
        moved = sorted(set(self.first_uidls) - set(found))
        if moved:
            raise CheckFailed(f"in a new session, no message has the unique-id that {', '.join(moved)} had")
        for name, n in found.items():
            text = self.pop.ok(f"UIDL {n}")
            if text.split(" ")[1:3] != [str(n), self.first_uidls[name]]:
                raise CheckFailed(f"UIDL {n}: {text!r}, the listing says '{n} {self.first_uidls[name]}'")
        return f"{len(uids)} unique-ids, well-formed and distinct; the test messages keep theirs; UIDL n agrees"

    def check_pop3_dele_rset(self):
        if "dot-lines" not in self.retrieved:
            raise CheckFailed("the dot-lines test message was not retrieved")
        n = self.number_of("dot-lines")
        pop = self.pop
        before = parse_stat(pop.ok("STAT"))
        pop.ok(f"DELE {n}")
        after = parse_stat(pop.ok("STAT"))
        if after != (before[0] - 1, before[1] - self.sizes[n]):
            raise CheckFailed(f"STAT after DELE {n}: {after}, expected {(before[0] - 1, before[1] - self.sizes[n])}")
        for line in (f"RETR {n}", f"LIST {n}", f"TOP {n} 0", f"UIDL {n}", f"DELE {n}"):
            status = pop.command(line)
            if status.ok:
                raise CheckFailed(f"{line} after DELE {n}: {status.text} (RFC 1939: a deleted message may not be used)")
        if n in parse_listing(pop.multiline("LIST"), "LIST"):
            raise CheckFailed(f"LIST after DELE {n} still lists message {n}")
        pop.ok("RSET")
        if parse_stat(pop.ok("STAT")) != before:
            raise CheckFailed(f"STAT after RSET differs from before DELE {before}")
        if pop.multiline(f"RETR {n}") != self.retrieved["dot-lines"]:
            raise CheckFailed(f"RETR {n} after RSET is not the message RETR sent before")
        return f"DELE {n} hid the message (STAT, RETR, LIST, TOP, UIDL, DELE); RSET restored it"

    def check_pop3_dele_drop(self):
        n = self.number_of("plain")
        self.pop.ok(f"DELE {n}")
        self._close_session()  # no QUIT: RFC 1939 §6 enters UPDATE only on QUIT
        self.new_session()
        if "plain" not in self.locate(self.sent_names()):
            raise CheckFailed("DELE deleted the message although the session ended without QUIT")
        return f"DELE {n}, connection closed without QUIT: the message is still there in the next session"

    def check_pop3_dele_quit(self):
        n = self.number_of("disposable")
        self.pop.ok(f"DELE {n}")
        self.pop.quit()
        self.pop = None
        self.new_session()
        left = self.locate(self.sent_names())
        if "disposable" in left:
            raise CheckFailed(f"DELE {n} then QUIT: the message is still there in the next session")
        kept = sorted(set(self.sent_names()) - {"disposable"} - set(left))
        if kept:
            raise CheckFailed(f"DELE {n} then QUIT also removed {', '.join(kept)}")
        return f"DELE {n}, QUIT: gone in the next session; the other test messages stayed"

    def check_cleanup(self):
        names = self.sent_names()
        self.new_session()
        found = self.locate(names)
        for n in found.values():
            self.pop.ok(f"DELE {n}")
        self.pop.quit()
        self.pop = None
        self.new_session()
        left = self.locate(names)
        if left:
            raise CheckFailed(f"still in the maildrop after DELE and QUIT: {', '.join(sorted(left))}")
        if self.uidls and self.other_uidls:
            lost = self.other_uidls - set(self.uidls.values())
            if lost:
                raise CheckFailed(f"{len(lost)} messages not from this run are gone (unique-ids {sorted(lost)[:3]})")
        elif len(self.sizes) < self.others_count:
            raise CheckFailed(f"{self.others_count} other messages before the run, {len(self.sizes)} after")
        self.pop.quit()
        self.pop = None
        return f"deleted {len(found)} test messages; the {self.others_count} other messages are untouched"


def _number(text, what):
    if not text.isdigit():
        raise ProtocolError(f"{what}: {text!r} is not a number")
    return int(text)


def run_checks(target, progress=None):
    """Runs every check against `target`; returns a Report. `progress(index, total, name,
    result)` is called as each check starts (result None) and ends."""
    return CheckRun(target, progress).run()


# ---- output


def format_table(report):
    """The results as a text table (check, result, detail) and a summary line."""
    width = max(len(r.name) for r in report.results)
    lines = [f"{'check':<{width}}  {'result':<11}  detail"]
    lines += [f"{r.name:<{width}}  {r.result:<11}  {r.detail}" for r in report.results]
    counts = report.counts()
    lines.append(
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[UNSUPPORTED]} unsupported "
        f"(test messages: Subject 'pocketpost check {report.token} ...')"
    )
    return "\n".join(lines)


def report_json(report, target, allow_unsupported):
    return json.dumps(
        {
            "host": target.host,
            "pop3_port": target.pop3_port,
            "smtp_port": target.smtp_port,
            "user": target.user,
            "domain": target.domain,
            "token": report.token,
            "passed": report.passed(allow_unsupported),
            "counts": report.counts(),
            "checks": [dataclasses.asdict(r) for r in report.results],
        },
        indent=2,
    )


PORT = click.IntRange(1, 65535)


def _print_progress(index, total, name, result):
    if result is None:
        click.echo(f"[{index:2}/{total}] {name} ... ", err=True, nl=False)
    else:
        click.echo(f"{result.result} ({result.seconds:.1f} s)", err=True)


@click.command(
    "check",
    short_help="Protocol checks of a board's POP3 and SMTP servers over the network.",
    help=(
        "Protocol checks of a board on Wi-Fi or the simulator: sends test messages by SMTP to "
        "USER@DOMAIN, fetches them by POP3 and compares them byte for byte, and checks errors, "
        "limits, locking and deletion against RFC 1939, 2449, 5321, 1870, 2920 and 3463. "
        "It deletes only its own test messages. Exit status 0 when every check passed, 1 "
        "otherwise (a check the server does not support counts as not passed unless "
        "--allow-unsupported is given)."
    ),
    epilog="\b\nChecks, in the order they run:\n" + "\n".join(f"  {name:<19} {what}" for name, what in CHECKS.items()),
)
@click.option("--host", envvar="POCKETPOST_HOST", show_envvar=True, required=True, help="The board's address or name.")
@click.option("--pop3-port", type=PORT, default=110, show_default=True, envvar="POCKETPOST_POP3_PORT", show_envvar=True)
@click.option("--smtp-port", type=PORT, default=25, show_default=True, envvar="POCKETPOST_SMTP_PORT", show_envvar=True)
@click.option("--user", envvar="POCKETPOST_USER", show_envvar=True, required=True, help="The mailbox to check.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting. (There is "
    "no password option or variable: command lines and environments are visible to other programs.)",
)
@click.option(
    "--domain",
    default="pocketpost.local",
    show_default=True,
    envvar="POCKETPOST_DOMAIN",
    show_envvar=True,
    help="The mail domain of USER (one of the board's `domains`).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True, help="Seconds to wait for any reply."
)
@click.option(
    "--large-size",
    type=click.IntRange(min=65536),
    default=DEFAULT_LARGE_SIZE,
    show_default=True,
    help="Octets of the large test message.",
)
@click.option(
    "--tls",
    type=click.Choice(["none", "starttls", "implicit"]),
    default="none",
    show_default=True,
    help="Run the checks over TLS: STLS/STARTTLS on the plain ports, or implicit TLS (give "
    "--pop3-port 995 --smtp-port 465). The certificate is always verified.",
)
@click.option(
    "--cafile",
    type=click.Path(exists=True, dir_okay=False),
    help="The CA certificate (PEM) to verify the board's certificate with, e.g. the certificate "
    "`pocketpost tls generate` made.",
)
@click.option(
    "--smtp-auth/--no-smtp-auth",
    default=None,
    help="AUTH PLAIN before sending (a submission port needs it). Default: on with --tls implicit.",
)
@click.option("--allow-unsupported", is_flag=True, help="Exit 0 when no check failed, even if some were unsupported.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
def check_command(
    host, pop3_port, smtp_port, user, password_stdin, domain, timeout, large_size, tls, cafile, smtp_auth,
    allow_unsupported, as_json
):
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    target = Target(
        host=host,
        user=user,
        password=password,
        domain=domain,
        pop3_port=pop3_port,
        smtp_port=smtp_port,
        timeout=timeout,
        large_size=large_size,
        tls=tls,
        cafile=cafile,
        smtp_auth=tls == "implicit" if smtp_auth is None else smtp_auth,
    )
    report = run_checks(target, _print_progress)
    click.echo(report_json(report, target, allow_unsupported) if as_json else format_table(report))
    sys.exit(0 if report.passed(allow_unsupported) else 1)


if __name__ == "__main__":
    check_command()
