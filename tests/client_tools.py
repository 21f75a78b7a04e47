"""Helpers for driving real third-party mail clients (swaks, smtp-source, curl, fetchmail, mpop,
CPython's smtplib/poplib) against an emulated board on loopback, and for reading back exactly what
the board stores.

The ground truth for "what is in the mailbox" is `pop3_messages`, a deliberately small POP3 reader
on a raw socket: it checks the wire framing itself (status line, byte-stuffing, CRLF.CRLF) and
compares every message with the size LIST and RETR announce, so a client that hides a framing
fault cannot make a test pass."""

import email.utils
import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
from dataclasses import dataclass

import pytest

HOST = "127.0.0.1"
USER = "alice"
PASSWORD = "wonderland"
DOMAIN = "pocketpost.local"
ALICE = f"{USER}@{DOMAIN}"
SENDER = "sender@example.org"

# The Debian package each outside program comes from: a missing program fails the test with this.
PACKAGES = {
    "swaks": "swaks",
    "smtp-source": "postfix",
    "curl": "curl",
    "fetchmail": "fetchmail",
    "mpop": "mpop",
}
# Where a program lives when it is not on PATH (smtp-source is in /usr/sbin).
_EXTRA_DIRS = ("/usr/sbin", "/sbin")

# How long one client run may take; every run here moves a few KB on loopback.
RUN_TIMEOUT = 30


def tool(name):
    """The path of outside program `name`; fails the test naming its Debian package if missing."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_DIRS))
    if path is None:
        pytest.fail(
            f"{name} is not installed: these tests need the Debian package {PACKAGES[name]!r} "
            f"(apt-get install {PACKAGES[name]})",
            pytrace=False,
        )
    return path


@dataclass
class Run:
    args: list
    returncode: int
    out: str  # stdout and stderr, interleaved

    def transcript(self):
        return f"$ {' '.join(map(str, self.args))}\n(exit {self.returncode})\n{self.out}"


def run(args, *, ok=(0,), timeout=RUN_TIMEOUT, env=None, cwd=None):
    """Runs a client to completion (bounded by `timeout`) and returns a Run. Fails the test with
    the full transcript when it times out or its exit code is not in `ok` (None: any)."""
    full_env = dict(os.environ, LC_ALL="C", LANG="C")
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
        pytest.fail(f"{args[0]} did not finish within {timeout} s:\n$ {' '.join(map(str, args))}\n{out}")
    result = Run(list(args), proc.returncode, proc.stdout.decode("utf-8", "replace"))
    if ok is not None and result.returncode not in ok:
        pytest.fail(f"{os.path.basename(str(args[0]))} failed (exit {result.returncode}, expected {ok}):\n{result.transcript()}")
    return result


def private_file(path, text):
    """Writes a config file only its owner may read (fetchmail and mpop refuse others when the
    file holds a password)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def to_lf(data):
    """What a Unix delivery agent writes: CRLF line ends as LF."""
    return data.replace(b"\r\n", b"\n")


def crlf(data):
    """LF line ends (and any CRLF ones) as CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# ---- the trace header fields the server puts before every message (RFC 5321 §4.4)

TRACE = re.compile(
    rb"Return-Path: <(?P<sender>[^<>\r\n]*)>\r\n"
    rb"Received: from (?P<helo>[^ \r\n]+) \((?P<peer>[0-9.]+) \[(?P=peer)\]\)\r\n"
    rb"\tby (?P<host>[^ \r\n]+) \(pocketpost\) with (?P<proto>SMTP|ESMTP|ESMTPA) id (?P<id>[0-9A-F]{8})"
    rb"(?:\r\n\tfor <(?P<rcpt>[^<>\r\n]+)>)?;\r\n"
    rb"\t(?P<date>[^\r\n]+)\r\n"
)


def split_trace(message):
    """(trace fields as str, the message as it was sent) of a stored message; fails the test
    when the message does not start with exactly the trace lines the server writes."""
    m = TRACE.match(message)
    assert m, f"stored message does not start with Return-Path and Received:\n{message[:400]!r}"
    fields = {k: (v.decode() if v is not None else None) for k, v in m.groupdict().items()}
    assert email.utils.parsedate_to_datetime(fields["date"]) is not None
    return fields, message[m.end() :]


# ---- POP3 ground truth


class Pop3Wire:
    """A minimal POP3 client on a raw socket that keeps the exact octets."""

    def __init__(self, port, user=USER, password=PASSWORD, timeout=20):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self._status()
        self.command(f"USER {user}")
        self.command(f"PASS {password}")

    def _status(self):
        line = self.file.readline()
        assert line.endswith(b"\r\n"), f"POP3 status line without CRLF: {line!r}"
        if not line.startswith(b"+OK"):
            raise AssertionError(f"POP3 error: {line!r}")
        return line[:-2]

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self._status()

    def multiline(self, text):
        """(status line, body octets unstuffed, the body's CRLF-ended lines joined)."""
        status = self.command(text)
        out = bytearray()
        while True:
            line = self.file.readline()
            assert line.endswith(b"\r\n"), f"multi-line response ended without CRLF.CRLF: {bytes(out[-200:])!r} {line!r}"
            if line == b".\r\n":
                return status, bytes(out)
            if line.startswith(b"."):
                line = line[1:]  # byte-stuffing (RFC 1939 §3)
            out += line

    def stat(self):
        _, count, octets = self.command("STAT").split()
        return int(count), int(octets)

    def listing(self, verb):
        _, body = self.multiline(verb)
        return [tuple(line.split(b" ")) for line in body.splitlines()]

    def sizes(self):
        return {int(n): int(size) for n, size in self.listing("LIST")}

    def uids(self):
        return {int(n): uid.decode() for n, uid in self.listing("UIDL")}

    def retr(self, n, size=None):
        status, message = self.multiline(f"RETR {n}")
        announced = int(status.split()[1])
        assert len(message) == announced, f"RETR {n} said {announced} octets, sent {len(message)}"
        if size is not None:
            assert len(message) == size, f"LIST said {size} octets for message {n}, RETR sent {len(message)}"
        return message

    def quit(self):
        self.command("QUIT")
        self.file.close()
        self.sock.close()


def pop3_messages(board, user=USER, password=PASSWORD):
    """Every message in the mailbox, in order, exactly as stored (CRLF lines, trace first)."""
    box = Pop3Wire(board.pop3_port, user, password)
    try:
        sizes = box.sizes()
        return [box.retr(n, size) for n, size in sorted(sizes.items())]
    finally:
        box.quit()


def pop3_uids(board, user=USER, password=PASSWORD):
    box = Pop3Wire(board.pop3_port, user, password)
    try:
        return box.uids()
    finally:
        box.quit()


def pop3_stat(board, user=USER, password=PASSWORD):
    """(messages, octets) by POP3 STAT."""
    box = Pop3Wire(board.pop3_port, user, password)
    try:
        return box.stat()
    finally:
        box.quit()


def bodies(board, user=USER, password=PASSWORD):
    """The stored messages without the trace lines: what the clients sent."""
    return [split_trace(m)[1] for m in pop3_messages(board, user, password)]


# ---- SMTP with CPython's smtplib


class RecordingSMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the message octets each DATA sent (before dot-stuffing), so a
    test compares against what really went on the wire."""

    def __init__(self, port, **kwargs):
        self.sent = []
        # A fixed EHLO name: smtplib would otherwise look up the host's FQDN (DNS, slow).
        super().__init__(HOST, port, local_hostname="client.example", timeout=20, **kwargs)

    def data(self, msg):
        assert isinstance(msg, bytes), "sendmail and send_message hand DATA bytes"
        self.sent.append(msg)
        return super().data(msg)


def smtp_send(board, *messages, sender=SENDER, to=(ALICE,)):
    """Sends each message (bytes, sent as they are) in one SMTP session."""
    with RecordingSMTP(board.smtp_port) as s:
        for message in messages:
            refused = s.sendmail(sender, list(to), message)
            assert not refused, refused
    return list(messages)


# ---- what a test message looks like


def sample_message(n, subject="test"):
    """A small CRLF message whose body needs byte-stuffing both ways (lines starting with
    dots, a line that is only a dot), with a numbered subject."""
    return (
        f"From: Sender <{SENDER}>\r\n"
        f"To: Alice <{ALICE}>\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}-{n}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"Message number {n}.\r\n"
        ".a line starting with a dot\r\n"
        "..two dots\r\n"
        ".\r\n"
        "\tindented, trailing space \r\n"
        "Gr\u00fc\u00dfe \u2014 8-bit text\r\n"
        "\r\n"
        "last line\r\n"
    ).encode()


def log_problems(board):
    """Board log lines that show something went wrong on the board's side."""
    return [
        line
        for line in board.lines
        if " ERROR " in line or "Traceback" in line or "session failed" in line or "MemoryError" in line
    ]


def large_message(size, seed=0):
    """A CRLF message of about `size` octets that is hard on buffered transparency code: lines
    of every length (empty, one dot, dots leading, runs of dots, 8-bit text, lines far past 1,000
    octets), so dots and line ends land on every offset of the server's buffers."""
    rnd = random.Random(seed)
    lines = [f"From: <{SENDER}>", f"To: <{ALICE}>", f"Subject: large message {seed}", ""]
    total = 0
    while total < size:
        kind = rnd.random()
        if kind < 0.25:
            line = "." * rnd.randint(1, 3) + "x" * rnd.randint(0, 100)
        elif kind < 0.30:
            line = "."
        elif kind < 0.35:
            line = ""
        elif kind < 0.40:
            line = "y" * rnd.randint(900, 3000)
        else:
            line = "".join(rnd.choice("abc .\u00e9") for _ in range(rnd.randint(0, 200)))
        lines.append(line)
        total += len(line.encode()) + 2
    return ("\r\n".join(lines) + "\r\n").encode()
