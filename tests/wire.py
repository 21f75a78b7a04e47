"""A raw-socket client for byte-exact protocol tests."""

import socket
import time


# Every Wire opened, so the test harness can close what a test left open.
OPEN = []


class Wire:
    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        OPEN.append(self)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line):
        """Sends one command line and returns the one-line reply (without CRLF)."""
        self.send(line + "\r\n")
        return self.line()

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed; unread: {!r}".format(self.buf))
        self.buf += data

    def line(self):
        """The next line, without its CRLF."""
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def until(self, terminator):
        """Raw bytes up to and including `terminator`."""
        while terminator not in self.buf:
            self._more()
        i = self.buf.index(terminator) + len(terminator)
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def multiline(self):
        """The body of a POP3 multi-line response, raw (still byte-stuffed), with its final
        CRLF.CRLF removed. The status line must have been read already."""
        data = b"\r\n" + self.until_end()
        return data[2:-3]

    def until_end(self):
        # The body ends at the first CRLF "." CRLF, counting the CRLF of the status line.
        while True:
            probe = b"\r\n" + self.buf
            i = probe.find(b"\r\n.\r\n")
            if i >= 0:
                end = i + 5 - 2  # in self.buf
                data, self.buf = self.buf[:end], self.buf[end:]
                return data
            self._more()

    def smtp_reply(self):
        """A possibly multi-line SMTP reply as a list of lines; all lines share the code."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def closed(self, timeout=5):
        """True when the server closes the connection (after any unread data) within `timeout`."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False

    def rest_until_closed(self):
        """Everything the server sends until it closes the connection, raw."""
        self.sock.settimeout(5)
        try:
            while True:
                self._more()
        except EOFError:
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self):
        self.sock.close()


def unstuff(body):
    """Undoes POP3 byte-stuffing of a multi-line body (raw, CRLF.CRLF removed)."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def pop3_login(port, user="alice", password="wonderland"):
    w = Wire(port)
    assert w.line().startswith("+OK")
    assert w.cmd("USER " + user).startswith("+OK")
    reply = w.cmd("PASS " + password)
    assert reply.startswith("+OK"), reply
    return w


def smtp_session(port, helo="EHLO client.example"):
    w = Wire(port)
    assert w.line().startswith("220 ")
    w.send(helo + "\r\n")
    reply = w.smtp_reply()
    assert reply[-1].startswith("250 "), reply
    return w


def send_mail(port, body, sender="bob@example.org", rcpts=("alice@pocketpost.local",)):
    """Sends one message: `body` is the raw DATA content, already dot-stuffed, without the line
    end of its last line and the final "." line (b"" sends an empty message)."""
    w = smtp_session(port)
    assert w.cmd("MAIL FROM:<{}>".format(sender)).startswith("250 ")
    for rcpt in rcpts:
        reply = w.cmd("RCPT TO:<{}>".format(rcpt))
        assert reply.startswith("250 "), reply
    assert w.cmd("DATA").startswith("354 ")
    w.send(body + b"\r\n.\r\n" if body else b".\r\n")
    reply = w.line()
    assert reply.startswith("250 2.0.0"), reply
    assert w.cmd("QUIT").startswith("221 ")
    w.close()
    return reply


def strip_trace(message):
    """The message without the Return-Path and Received fields the server prepends."""
    lines = message.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: <"), lines[:3]
    assert lines[1].startswith(b"Received: from "), lines[:3]
    i = 2
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])
