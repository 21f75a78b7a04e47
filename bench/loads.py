"""The loads of `make bench`, usable against any server address (loopback here; a board's
address from the hardware suite): Postfix's smtp-source for SMTP, and a raw-socket POP3 client.

The POP3 client measures the server, not itself: TCP_NODELAY, one command at a time (no
pipelining, as mail clients do), replies read into one preallocated buffer, and a multi-line
reply is only searched for its end (CRLF "." CRLF) across the last bytes received; no per-line
parsing. Every loop is bounded in count and in time."""

import os
import shutil
import socket
import subprocess
import time

SMTP_SOURCE_PACKAGE = "postfix"
# smtp-source and smtp-sink live in /usr/sbin, which a non-root PATH may lack.
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# How long one smtp-source run may take before it is killed and the run counts as failed.
SMTP_RUN_TIMEOUT = 180
# How long one POP3 measurement may take.
POP3_RUN_TIMEOUT = 120
SENDER = "bench@client.test"
HELO = "client.test"


class LoadError(Exception):
    """A load did not complete as asked (a server refused, timed out or lost mail)."""


def find_tool(name, package=SMTP_SOURCE_PACKAGE):
    path = shutil.which(name, path=_SBIN)
    if path is None:
        raise LoadError(f"{name} is not installed (Debian package {package})")
    return path


def smtp_source_command(host, port, rcpt, size, messages, sessions):
    """smtp-source sending `messages` messages with a `size`-octet body over `sessions` parallel
    sessions, a new connection for each message (smtp-source's default)."""
    return [
        find_tool("smtp-source"),
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(size),
        "-M", HELO,
        "-f", SENDER,
        "-t", rcpt,
        f"{host}:{port}",
    ]


def run_smtp_source(host, port, rcpt, size, messages, sessions, timeout=SMTP_RUN_TIMEOUT):
    """Runs smtp-source once; returns its wall time in seconds. Raises LoadError when it fails
    (smtp-source stops at the first unexpected reply) or runs past `timeout`."""
    cmd = smtp_source_command(host, port, rcpt, size, messages, sessions)
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(f"smtp-source ran past {timeout} s: {' '.join(cmd)}") from None
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise LoadError(f"smtp-source failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-300:]}")
    return elapsed


class Pop3Error(LoadError):
    pass


_END = b"\r\n.\r\n"
IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
TCP_NODELAY = getattr(socket, "TCP_NODELAY", 1)


class RawPop3:
    """A POP3 connection on a raw socket. `received` counts every octet read from the server."""

    BUFFER = 4 << 20

    def __init__(self, host, port, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
        self.buf = bytearray(self.BUFFER)
        self.mv = memoryview(self.buf)
        self.received = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _status(self, n):
        if self.buf[0] != 43:  # "+"
            line = bytes(self.buf[: min(n, 200)]).split(b"\r\n")[0]
            raise Pop3Error(f"server answered {line!r}")

    def line(self):
        """Reads a one-line reply (the server sends nothing after it); returns its length."""
        n = 0
        while n < 2 or self.buf[n - 2 : n] != b"\r\n":
            got = self.sock.recv_into(self.mv[n:])
            if not got:
                raise Pop3Error("connection closed")
            n += got
            if n == len(self.buf):
                raise Pop3Error("reply line too long")
        self.received += n
        self._status(n)
        return n

    def multi(self):
        """Reads a multi-line reply up to its CRLF.CRLF; returns the octets read (status line
        included). Only the tail is examined, across chunk boundaries."""
        n = 0
        total = 0
        checked_status = False
        while True:
            got = self.sock.recv_into(self.mv[n:])
            if not got:
                raise Pop3Error("connection closed")
            n += got
            if not checked_status:
                if self.buf[0] != 43:
                    if b"\r\n" in self.buf[:n]:
                        self._status(n)
                    continue
                checked_status = True
            if n >= 5 and self.buf[n - 5 : n] == _END:
                total += n
                break
            if n > len(self.buf) - 65536:
                # Keep the last 4 octets: the end marker may straddle the refill.
                self.buf[:4] = self.buf[n - 4 : n]
                total += n - 4
                n = 4
        self.received += total
        return total

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def cmd_multi(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.multi()

    def quit(self):
        """QUIT, then waits until the server closes (the session is over on its side)."""
        self.cmd("QUIT")
        self.sock.settimeout(10)
        while self.sock.recv_into(self.mv):
            pass


def login_stat_uidl(host, port, user, password):
    """One mail-check: connect, greeting, USER, PASS, STAT, UIDL. Returns the times in seconds
    of each step (from the connect) and the STAT count; QUITs afterwards (not timed)."""
    t0 = time.perf_counter()
    with RawPop3(host, port) as c:
        c.line()
        t_greet = time.perf_counter()
        c.cmd(f"USER {user}")
        c.cmd(f"PASS {password}")
        t_login = time.perf_counter()
        n = c.cmd("STAT")
        count = int(bytes(c.buf[4:n]).split()[0])
        t_stat = time.perf_counter()
        c.cmd_multi("UIDL")
        t_uidl = time.perf_counter()
        c.quit()
    return {
        "total": t_uidl - t0,
        "connect_greeting": t_greet - t0,
        "login": t_login - t_greet,
        "stat": t_stat - t_login,
        "uidl": t_uidl - t_stat,
        "count": count,
    }


def login(host, port, user, password):
    c = RawPop3(host, port)
    try:
        c.line()
        c.cmd(f"USER {user}")
        c.cmd(f"PASS {password}")
    except BaseException:
        c.close()
        raise
    return c


def retr_range(conn, first, last, timeout=POP3_RUN_TIMEOUT, min_octets=0):
    """RETRs messages first..last one after the other on a logged-in connection; returns
    (seconds, octets received). Each reply must have at least `min_octets` octets."""
    deadline = time.perf_counter() + timeout
    octets = 0
    start = time.perf_counter()
    for n in range(first, last + 1):
        got = conn.cmd_multi(f"RETR {n}")
        if got < min_octets:
            raise Pop3Error(f"RETR {n} returned {got} octets, expected at least {min_octets}")
        octets += got
        if time.perf_counter() > deadline:
            raise Pop3Error(f"RETR {first}..{last} ran past {timeout} s")
    return time.perf_counter() - start, octets
