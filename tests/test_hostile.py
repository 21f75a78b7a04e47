"""Hostile clients against the firmware on the emulated board: fuzzed input to both servers in
every state, the SMTP smuggling probes of the public tools, slow clients, a client that stops
reading in the middle of a 5 MB RETR, connection floods past the client limit, 1,000 failed
logins, and path and injection attempts.

Whatever they send, the firmware must stay up (no traceback, no failed session on the console),
give back the memory the clients used (the console's free heap, once every connection is closed,
within a small margin of what it was before), keep serving a well-behaved client correctly, and
create no file outside the mailbox folders (the SD card's tree is read after each test).

All loops are bounded in count and in time; the random input comes from fixed seeds.

Every test client connects from the loopback, so every one of them is 127.0.0.1 to the login
throttle, which counts failures per client address. The login tests therefore bind their
clients to other loopback source addresses (127.0.0.2, 127.0.1.x: Linux routes all of
127.0.0.0/8 to the loopback interface): the guesser is one address, the well-behaved client
another, and a spread-out guesser a hundred more.
"""

import ast
import base64
import random
import re
import socket
import threading
import time

import pytest

import crash_harness as ch
import sd_card
import wire
from wire import Wire, pop3_login, send_mail, smtp_session, strip_trace, unstuff

from messages import MB, big_message, stuff

DOMAIN = "pocketpost.local"
PASSWORDS = {"alice": "wonderland", "bob": "builder", "fuzz": "fuzzing", "victim": "secret"}
# Free heap may differ by this much before and after a test's clients (fragments of the heap,
# and MicroPython's collector is conservative); tests/test_limits.py allows the same.
HEAP_MARGIN = 2048


# ---- helpers


def hostile_board(make_board, **config):
    """A board with the users of PASSWORDS and three known messages for alice."""
    board = make_board().start()
    for user, password in PASSWORDS.items():
        board.add_user(user, password)
    if config:
        board.set_config(**config)
    for i in range(3):
        send_mail(board.smtp_port, "Subject: known {}\r\n\r\nbody {}\r\n..dot line".format(i, i).encode())
    return board


ALICE_KNOWN = [b"Subject: known %d\r\n\r\nbody %d\r\n.dot line\r\n" % (i, i) for i in range(3)]


def warm_up(board):
    """Uses every client place at once (two POP3, two SMTP sessions), then a well-behaved client:
    the event loop's tables grow to their size for that many sockets once and stay so, which is
    not a leak. Returns the free heap after."""
    board.settled_heap()
    conns = [Wire(board.pop3_port), Wire(board.pop3_port), Wire(board.smtp_port), Wire(board.smtp_port)]
    for w in conns:
        w.line()
    for w in conns:
        assert w.cmd("QUIT").startswith(("+OK", "221"))
        w.close()
    well_behaved_client(board)
    return board.settled_heap()


def clients(board):
    return board.request("info")["clients"]


def console_problems(board, start=0):
    return [line for line in board.lines[start:] if "Traceback" in line or "session failed" in line
            or "MemoryError" in line or "ERROR boot" in line]


def well_behaved_client(board, known=ALICE_KNOWN):
    """A normal SMTP delivery and a normal POP3 session: every answer as it must be."""
    start = time.monotonic()
    send_mail(board.smtp_port, b"Subject: after\r\n\r\nstill served")
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK {} ".format(len(known) + 1))
    got = []
    for n in range(1, len(known) + 2):
        status = w.cmd("RETR {}".format(n))
        assert status.startswith("+OK"), status
        got.append(strip_trace(unstuff(w.multiline())))
    assert got == known + [b"Subject: after\r\n\r\nstill served\r\n"]
    assert w.cmd("DELE {}".format(len(known) + 1)) == "+OK Marked to be deleted."
    assert w.cmd("QUIT") == "+OK Logging out."
    w.close()
    return time.monotonic() - start


# The relay's queue folder is there (empty: no hostile client may relay) as docs/storage.md says.
_TREE = re.compile(r"^/sd/(tmp|queue|mail|mail/(?P<user>[^/]+)(/index|/\d+|/\d+/\d+)?)$")
_FLASH_TREE = re.compile(r"^/flash/(config\.json|users|users/(?P<user>[^/]+))$")


def card_tree(board, app_dir, users=PASSWORDS):
    """Stops the board and lists its SD card and its flash; asserts that nothing but the mailbox
    folders of real users and the (empty) temp and queue folders is on the card, and nothing but the
    settings and the records of real users on the flash."""
    board.stop()
    listing = ast.literal_eval(sd_card.run(app_dir, board.data / "sd.img", "print(sorted(tree()))").strip().splitlines()[-1])
    flash = ast.literal_eval(
        sd_card.run(app_dir, board.data / "flash.img", "print(sorted(tree()))", flash=True).strip().splitlines()[-1]
    )
    strays = []
    for path in listing:
        m = _TREE.match(path)
        if m is None or (m.group("user") is not None and m.group("user") not in users):
            strays.append(path)
        if path.startswith("/sd/tmp/"):
            strays.append(path)
    for path in flash:
        m = _FLASH_TREE.match(path)
        if m is None or (m.group("user") is not None and m.group("user") not in users):
            strays.append(path)
    assert not strays, "files outside the mailbox folders and the user records: {}".format(strays)
    return listing


def tracked(sock):
    """A raw socket the test harness closes after the test, however the test ends (conftest's
    close_wires closes everything in wire.OPEN)."""
    wire.OPEN.append(sock)
    return sock


def connect(port, timeout=10):
    return tracked(socket.create_connection(("127.0.0.1", port), timeout=timeout))


def connect_from(source, port, timeout=20):
    """A connection to the board from another loopback address."""
    s = tracked(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


class Drain(threading.Thread):
    """Reads everything the server sends on a socket, until it closes it or we do."""

    def __init__(self, sock, keep=1 << 20):
        super().__init__(daemon=True)
        self.sock = sock
        self.keep = keep
        self.data = b""
        self.closed_by_server = False
        self.start()

    def run(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed_by_server = True
                    return
                self.data = (self.data + chunk)[-self.keep :]
        except OSError:
            return


# ---- fuzzing


POP3_VERBS = ["USER", "PASS", "APOP", "AUTH", "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP",
              "RSET", "TOP", "UIDL", "STLS", "XTND", "LAST", "RPOP"]
SMTP_VERBS = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
              "AUTH", "BDAT", "STARTTLS", "ETRN", "TURN", "SEND", "SAML"]
LINE_ENDS = [b"\r\n"] * 8 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"\x00\r\n"]


def fuzz_token(rng):
    r = rng.random()
    if r < 0.15:
        return rng.choice(["0", "1", "2", "3", "-1", "4294967296", "99999999999999999999", "00001", "1 2", "+3", "1e3", ""])
    if r < 0.3:
        local = rng.choice(["alice", "fuzz", "../../x", "a/b", ".hidden", "", "\"q uoted\"", "x" * rng.choice((64, 65, 300))])
        domain = rng.choice([DOMAIN, "example.org", "", "[127.0.0.1]", "d" * 70 + ".org", "a..b"])
        return rng.choice(["FROM:", "TO:", "from:", ""]) + rng.choice(["<{}@{}>".format(local, domain), "<>", "<@a,@b:c@d>",
                                                                      "{}@{}".format(local, domain), "<" + local]) + rng.choice(["", " SIZE=10", " BODY=8BITMIME", " X=Y", " SIZE=-1"])
    if r < 0.4:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        return base64.b64encode(raw).decode() + rng.choice(["", "=", "==", "*", "!"])
    if r < 0.5:
        return rng.choice(["%s%n%x", "{0}{}", "\u00e9\u2603", "\x1b[2J", "\x00", "\x7f", "PLAIN", "LOGIN", "CRAM-MD5", "*", "="])
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.-_@<>:") for _ in range(rng.randint(1, 20)))


def fuzz_line(rng, verbs):
    """One command line of garbage, valid verbs with bad arguments, bytes or overlong text."""
    r = rng.random()
    if r < 0.5:
        verb = rng.choice(verbs)
        verb = rng.choice((verb, verb.lower(), verb.title()))
        line = (verb + " " + " ".join(fuzz_token(rng) for _ in range(rng.randint(0, 3)))).encode("utf-8", "surrogatepass")
    elif r < 0.62:
        line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
    elif r < 0.7:
        size = rng.choice((254, 255, 256, 511, 512, 1022, 1023, 1024, 1025, 2000, 5000))
        line = rng.choice(verbs).encode() + b" " + bytes(rng.choice(b"ax\x00\xff ") for _ in range(size))
    elif r < 0.78:
        line = b"\x00".join(rng.choice(verbs).encode() for _ in range(rng.randint(1, 4)))
    elif r < 0.88:
        line = rng.choice((b"", b" ", b"\t", b"  \t "))
    else:
        line = rng.choice(verbs).encode()
    return line + rng.choice(LINE_ENDS)


def fuzz_data(rng):
    """DATA content: binary, bare line ends, dots, NULs, smuggling look-alikes."""
    pieces = [b".", b"..", b"\r\n", b"\r", b"\n", b"\x00", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"x" * 1500,
              bytes(rng.randrange(256) for _ in range(64)), b"MAIL FROM:<evil@example.org>\r\n"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))


# (name, port attribute, what is sent first, verbs of the state)
FUZZ_STATES = [
    ("pop3 before login", "pop3_port", b"", POP3_VERBS),
    ("pop3 after login", "pop3_port", b"USER fuzz\r\nPASS fuzzing\r\n", POP3_VERBS),
    ("pop3 inside AUTH", "pop3_port", b"AUTH LOGIN\r\n", POP3_VERBS),
    ("smtp before EHLO", "smtp_port", b"", SMTP_VERBS),
    ("smtp outside a transaction", "smtp_port", b"EHLO fuzz.example\r\n", SMTP_VERBS),
    ("smtp inside a transaction", "smtp_port",
     b"EHLO fuzz.example\r\nMAIL FROM:<f@example.org>\r\nRCPT TO:<fuzz@pocketpost.local>\r\n", SMTP_VERBS),
    ("smtp inside AUTH", "smtp_port", b"EHLO fuzz.example\r\nAUTH LOGIN\r\n", SMTP_VERBS),
    ("smtp inside DATA", "smtp_port",
     b"EHLO fuzz.example\r\nMAIL FROM:<f@example.org>\r\nRCPT TO:<fuzz@pocketpost.local>\r\nDATA\r\n", SMTP_VERBS),
]

_SMTP_REPLY = re.compile(rb"^[2-5]\d\d[ -]")
# What a client beyond the limit gets (a closed session's place may not be free yet when the next
# connection of a worker arrives).
SMTP_BUSY = b"421 4.3.2 Too many connections, try again later"
POP3_BUSY = b"-ERR [SYS/TEMP] Too many clients, try again later."


def fuzz_session(board, rng, state, deadline):
    """One connection of garbage in `state`; returns what is wrong in the server's replies."""
    name, port_attr, prelude, verbs = state
    sock = connect(getattr(board, port_attr))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    drain = Drain(sock)
    if name == "smtp inside DATA":
        payload = fuzz_data(rng)
        if rng.random() < 0.7:
            payload += b"\r\n.\r\n" + b"".join(fuzz_line(rng, verbs) for _ in range(rng.randint(0, 10)))
    else:
        payload = b"".join(fuzz_line(rng, verbs) for _ in range(rng.randint(1, 40)))
    payload = prelude + payload
    try:
        i = 0
        while i < len(payload) and time.monotonic() < deadline:
            n = rng.choice((1, 2, 7, 64, 300, 1500, 65536))
            sock.sendall(payload[i : i + n])
            i += n
            if rng.random() < 0.05:
                time.sleep(0.005)
        ending = rng.random()
        if ending < 0.3:
            sock.sendall(b"\r\nQUIT\r\n")
            drain.join(5)
        elif ending < 0.5:
            sock.shutdown(socket.SHUT_WR)
            drain.join(5)
        elif ending < 0.7:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        else:
            time.sleep(0.02)
    except OSError:
        pass  # the server closed first (too many bad commands): fine
    finally:
        try:
            sock.shutdown(socket.SHUT_RD)  # wakes the reader; nothing goes to the server
        except OSError:
            pass
        sock.close()
    drain.join(5)
    wrong = []
    if port_attr == "smtp_port":
        lines = drain.data.split(b"\r\n")
        for line in lines[:-1]:
            if not _SMTP_REPLY.match(line):
                wrong.append("{}: not an SMTP reply: {!r}".format(name, line[:80]))
        if lines and lines[0] and not lines[0].startswith(b"220 ") and lines[0] != SMTP_BUSY:
            wrong.append("{}: greeting {!r}".format(name, lines[0][:80]))
    elif drain.data and not drain.data.startswith((b"+OK pocketpost POP3 ready.", POP3_BUSY)):
        wrong.append("{}: greeting {!r}".format(name, drain.data[:80]))
    return wrong


def run_fuzz(board, seed, sessions_per_state, workers=3, seconds=40):
    """Fuzz sessions over every state, `workers` at a time; returns the wrong replies seen."""
    rng = random.Random(seed)
    jobs = [(random.Random(rng.random()), state) for state in FUZZ_STATES for _ in range(sessions_per_state)]
    rng.shuffle(jobs)
    deadline = time.monotonic() + seconds
    wrong = []
    lock = threading.Lock()

    def worker(my_jobs):
        for job_rng, state in my_jobs:
            if time.monotonic() > deadline:
                return
            try:
                found = fuzz_session(board, job_rng, state, deadline)
            except OSError as e:  # could not even connect
                found = ["{}: {!r}".format(state[0], e)]
            with lock:
                wrong.extend(found)

    threads = [threading.Thread(target=worker, args=(jobs[i::workers],)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    assert time.monotonic() < deadline + 30
    return wrong


def test_fuzzed_input_in_every_state(make_board, app_dir):
    """Random command lines, binary bytes, overlong lines, NULs, bare CR and LF and pipelined
    garbage, in every state of both servers, three connections at a time: the firmware stays up
    and sane, gives its memory back, and then serves a well-behaved client correctly."""
    board = hostile_board(make_board, auth_fail_delay_ms=0, auth_max_failures=1000)
    run_fuzz(board, seed=1, sessions_per_state=1)  # every code path once: lasting allocations
    before = warm_up(board)
    start_line = len(board.lines)
    started = time.monotonic()
    wrong = run_fuzz(board, seed=20261126, sessions_per_state=16)
    elapsed = time.monotonic() - started
    assert board.proc.poll() is None, "the firmware died"
    assert not console_problems(board, start_line), console_problems(board, start_line)[:20]
    assert not wrong, wrong[:20]
    after = board.settled_heap()
    assert after >= before - HEAP_MARGIN, "free heap {} before the fuzzing, {} after".format(before, after)
    assert well_behaved_client(board) < 5
    print("fuzzing: {} sessions in {:.1f} s; free heap {} -> {}".format(16 * len(FUZZ_STATES), elapsed, before, after))
    card_tree(board, app_dir)


# ---- SMTP smuggling


# End-of-data look-alikes: the union of the lists of hannob/smtpsmug and The-Login's
# SMTP-Smuggling-Tools (inbound and outbound), plus the NUL and doubled-line-end variants of the
# SEC Consult research. Each is followed by a whole smuggled transaction, then the real end.
SMUGGLING_ENDS = {
    "LF . LF": b"\n.\n",
    "LF . CR": b"\n.\r",
    "CR . LF": b"\r.\n",
    "CR . CR": b"\r.\r",
    "LF . CRLF (CVE-2023-51764)": b"\n.\r\n",
    "CRLF . LF": b"\r\n.\n",
    "CR . CRLF": b"\r.\r\n",
    "CRLF . CR": b"\r\n.\r",
    "CRLF NUL . CRLF": b"\r\n\x00.\r\n",
    "CRLF . NUL CRLF": b"\r\n.\x00\r\n",
    "CRLF . CR CRLF": b"\r\n.\r\r\n",
    "CR CRLF . CR CRLF": b"\r\r\n.\r\r\n",
    "LF LF . CRLF": b"\n\n.\r\n",
    "CRLF NUL . CR": b"\r\n\x00.\r",
    "CRLF NUL . LF": b"\r\n\x00.\n",
    "CR NUL LF . CRLF": b"\r\x00\n.\r\n",
    "CRLF . CR NUL LF": b"\r\n.\r\x00\n",
}
SMUGGLED = (b"MAIL FROM:<admin@pocketpost.local>\r\nRCPT TO:<victim@pocketpost.local>\r\nDATA\r\n"
            b"From: admin@pocketpost.local\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")


def test_smtp_smuggling_never_creates_a_second_message(make_board, app_dir):
    """Every end-of-data look-alike, sent at once and byte by byte: the server reads it as
    content, answers the DATA once, and takes nothing after it for commands; the victim gets
    nothing, the sender's recipient exactly one message."""
    board = hostile_board(make_board)
    smuggled = []
    count = 0
    for name, end in SMUGGLING_ENDS.items():
        for bytewise in (False, True):
            w = smtp_session(board.smtp_port)
            w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250 ")
            assert w.cmd("RCPT TO:<bob@pocketpost.local>").startswith("250 ")
            assert w.cmd("DATA").startswith("354 ")
            data = b"Subject: probe " + name.encode() + b"\r\n\r\nbody" + end + SMUGGLED
            if bytewise:
                head = len(b"Subject: probe " + name.encode() + b"\r\n\r\nbody")
                w.send(data[:head])
                for i in range(head, head + len(end) + 30):
                    time.sleep(0.002)
                    w.send(data[i : i + 1])
                w.send(data[head + len(end) + 30 :])
            else:
                w.send(data)
            w.send(b"QUIT\r\n")
            replies = []
            while True:
                try:
                    replies.append(w.line())
                except EOFError:
                    break
            count += 1
            if [r[:9] for r in replies] != ["250 2.0.0", "221 2.0.0"]:
                smuggled.append((name, "byte by byte" if bytewise else "at once", replies))
            w.close()
    assert not smuggled, smuggled
    w = pop3_login(board.pop3_port, "victim", "secret")
    assert w.cmd("STAT") == "+OK 0 0"
    w.cmd("QUIT")
    w = pop3_login(board.pop3_port, "bob", "builder")
    assert w.cmd("STAT").startswith("+OK {} ".format(count))
    for n in range(1, count + 1):
        assert w.cmd("RETR {}".format(n)).startswith("+OK")
        message = strip_trace(unstuff(w.multiline()))
        assert message.count(b"Subject: smuggled") == 1 and message.startswith(b"Subject: probe "), message[:200]
        assert b"\r\n" in message and b"\r" not in message.replace(b"\r\n", b"") and b"\n" not in message.replace(b"\r\n", b"")
    w.cmd("QUIT")
    assert not console_problems(board)
    card_tree(board, app_dir)


# ---- slow and stalled clients


def slow_client(port, text, results, key):
    """Sends `text` one byte per second; keeps all the replies."""
    try:
        s = connect(port, timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        drain = Drain(s)
        for byte in text:
            s.sendall(bytes((byte,)))
            time.sleep(1)
        drain.join(5)
        s.close()
        results[key] = drain.data
    except OSError as e:
        results[key] = repr(e)


def stall_retr(board):
    """A POP3 client that asks for bob's 5 MB message and reads nothing; returns its socket."""
    stalled = tracked(socket.socket())
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", board.pop3_port))
    stalled.sendall(b"USER bob\r\nPASS builder\r\nRETR 1\r\n")
    return stalled


def wait_for_place(board, most, timeout=5):
    deadline = time.monotonic() + timeout
    while clients(board) > most and time.monotonic() < deadline:
        time.sleep(0.05)


def test_slow_and_stalled_clients(make_board, app_dir):
    """Three clients that take their time, at once: a POP3 client that asks for a 5 MB message
    and reads nothing, and an SMTP and a POP3 client that send one byte per second (12 s each).
    The slow ones get their answers as their lines complete; a good client, in the one place
    left, is served at full speed all along; memory holds; the stalled session ends at its idle
    time-out (pop3_idle_timeout 10 s) and gives its place back. A second stall alone then costs
    no more memory than the first left behind."""
    board = hostile_board(make_board, pop3_idle_timeout=10)
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<bob@pocketpost.local>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(stuff(big_message(5 * MB)))
    assert w.line().startswith("250 2.0.0")
    w.cmd("QUIT")
    w.close()
    warm_up(board)
    stalled = stall_retr(board)
    stalled_at = time.monotonic()
    assert board.wait_log("login bob (USER)", 5)
    results = {}
    threads = [threading.Thread(target=slow_client, args=(board.smtp_port, b"NOOP\r\nQUIT\r\n", results, "smtp")),
               threading.Thread(target=slow_client, args=(board.pop3_port, b"CAPA\r\nQUIT\r\n", results, "pop3"))]
    for t in threads:
        t.start()
    rounds = []
    lowest = None
    while any(t.is_alive() for t in threads):
        wait_for_place(board, 3)
        t = time.monotonic()
        send_mail(board.smtp_port, b"Subject: meanwhile\r\n\r\nx")
        wait_for_place(board, 3)
        p = pop3_login(board.pop3_port)
        assert p.cmd("RETR 4").startswith("+OK")
        assert strip_trace(unstuff(p.multiline())) == b"Subject: meanwhile\r\n\r\nx\r\n"
        assert p.cmd("DELE 4").startswith("+OK")
        assert p.cmd("QUIT") == "+OK Logging out."
        p.close()
        rounds.append(time.monotonic() - t)
        info = board.request("info")
        lowest = info["heap_free"] if lowest is None else min(lowest, info["heap_free"])
        time.sleep(0.2)
    for t in threads:
        t.join(30)
    assert results["smtp"] == b"220 pocketpost ESMTP pocketpost\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n", results
    assert results["pop3"].startswith(b"+OK pocketpost POP3 ready.\r\n+OK Capability list follows\r\n"), results
    assert results["pop3"].endswith(b".\r\n+OK Logging out.\r\n"), results
    assert len(rounds) >= 10 and max(rounds) < 2, rounds
    assert lowest > 4096, "free heap went down to {} meanwhile".format(lowest)
    # The stalled session ends at its idle time-out (the reaper looks once a second).
    while clients(board) and time.monotonic() - stalled_at < 16:
        time.sleep(0.2)
    ended_after = time.monotonic() - stalled_at
    assert board.wait_log("127.0.0.1 idle time-out")
    assert clients(board) == 0, "the stalled session still holds its place {:.0f} s after it stalled".format(ended_after)
    assert 9 < ended_after < 16, ended_after
    stalled.close()
    before = board.settled_heap()
    stalled = stall_retr(board)
    stalled_at = time.monotonic()
    time.sleep(9)
    while clients(board) and time.monotonic() - stalled_at < 16:
        time.sleep(0.2)
    assert clients(board) == 0
    stalled.close()
    assert not console_problems(board)
    assert board.settled_heap() >= before - HEAP_MARGIN
    assert well_behaved_client(board) < 5
    card_tree(board, app_dir)


# ---- load at the client limit


@pytest.mark.memory
def test_four_clients_at_once_never_run_out_of_memory(make_board):
    """Two SMTP clients delivering (up to 400 KB, some to two mailboxes) and two POP3 clients
    logging in, reading and deleting, all at once for 10 s (after 2 s of the same): the client
    limit, at the heap the board has. No session may fail for lack of memory (or any other reason), nothing is refused,
    and the memory comes back."""
    board = make_board().start()
    for user, password in ch.USERS.items():
        board.add_user(user, password)
    warm_up_plain(board)
    ledger = ch.Ledger()
    # Two seconds of it first: every code path once (lasting allocations are no leak).
    load = ch.Load(board, ledger, random.Random(43), "w", smtp_clients=2, pop3_clients=2).start()
    time.sleep(2)
    assert load.finish(30)
    before = board.settled_heap()
    load = ch.Load(board, ledger, random.Random(44), "m", smtp_clients=2, pop3_clients=2).start()
    time.sleep(10)
    assert load.finish(30)
    assert not console_problems(board), console_problems(board)[:12]
    assert not ledger.errors and not ledger.refusals, (ledger.errors[:5], ledger.refusals[:5])
    assert load.deliveries > 50 and load.quits > 50, (load.deliveries, load.quits)
    assert board.settled_heap() >= before - HEAP_MARGIN


def warm_up_plain(board):
    """warm_up for a board without the known messages of hostile_board."""
    board.settled_heap()
    conns = [Wire(board.pop3_port), Wire(board.pop3_port), Wire(board.smtp_port), Wire(board.smtp_port)]
    for w in conns:
        w.line()
        w.cmd("QUIT")
        w.close()
    return board.settled_heap()


# ---- floods


def flood(board, count):
    """`count` connections at once, half to each server: exactly max_clients (4) are served, the
    others told to come back later and closed; the served ones work. Then all close."""
    socks = []
    for i in range(count):
        port = board.pop3_port if i % 2 else board.smtp_port
        socks.append((port, connect(port)))
    served = []
    refused = 0
    for port, s in socks:
        first = s.recv(200)
        if first.startswith((b"220 pocketpost", b"+OK pocketpost")):
            served.append((port, s))
        else:
            assert first in (SMTP_BUSY + b"\r\n", POP3_BUSY + b"\r\n"), first
            s.settimeout(5)
            assert s.recv(100) == b""  # and closed
            refused += 1
    assert len(served) == 4 and refused == count - 4, (len(served), refused)
    for port, s in served:
        s.sendall(b"NOOP\r\n" if port == board.smtp_port else b"CAPA\r\n")
        assert s.recv(100).startswith((b"250 2.0.0 Ok", b"+OK Capability"))
    for _, s in socks:
        s.close()


def test_connection_flood_past_the_client_limit(make_board, app_dir):
    """24 connections at once, six times the client limit, four times over (the first rounds size
    the event loop's tables for that many sockets; the later ones must not take more memory),
    then 60 that connect and reset at once: exactly max_clients are served each time, the others
    are told to come back and closed, nothing leaks, and a good client is served afterwards.

    (The listen backlog is 4: connections beyond what the firmware has accepted yet wait for the
    kernel's SYN retry, about a second; the reset churn measures that rate too.)"""
    board = hostile_board(make_board)
    warm_up(board)
    flood(board, 24)
    flood(board, 24)
    before = board.settled_heap()
    flood(board, 24)
    flood(board, 24)
    assert board.settled_heap() >= before - HEAP_MARGIN
    started = time.monotonic()
    for i in range(60):
        s = tracked(socket.socket())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.settimeout(10)
        s.connect(("127.0.0.1", board.pop3_port if i % 2 else board.smtp_port))
        s.close()  # reset at once
    churn = time.monotonic() - started
    assert churn < 30, churn
    assert board.proc.poll() is None
    assert not console_problems(board)
    assert board.wait_log("refused: 4 clients already")
    assert board.settled_heap() >= before - HEAP_MARGIN
    assert well_behaved_client(board) < 5
    print("60 connections reset at once in {:.1f} s".format(churn))
    card_tree(board, app_dir)


# ---- password guessing


def pop3_attempts(sock, attempts):
    """Pipelines `attempts` (USER/PASS or AUTH PLAIN lines) on one POP3 connection; returns the
    replies to the attempts (the USER replies left out)."""
    lines = []
    expected = 0
    for user, password, how in attempts:
        if how == "plain":
            lines.append("AUTH PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode())
            expected += 1
        else:
            lines += ["USER " + user, "PASS " + password]
            expected += 2
    sock.sendall(("\r\n".join(lines) + "\r\n").encode())
    buf = b""
    while buf.count(b"\r\n") < expected:
        chunk = sock.recv(65536)
        assert chunk, "connection closed; got {!r}".format(buf[-300:])
        buf += chunk
    replies = [line.decode() for line in buf.split(b"\r\n")[:expected]]
    return [r for r in replies if r != "+OK Send PASS."]


def test_a_thousand_failed_logins(make_board, app_dir):
    """900 wrong passwords and unknown users from one address (POP3 USER/PASS, POP3 AUTH PLAIN,
    SMTP AUTH PLAIN) for longer than the lock-out, then 200 more spread over 200 addresses:

    - the guessing address gets auth_max_failures real checks, each answered late, and then only
      "try again later", without a password check, for as long as it keeps trying (it is never
      quiet for auth_lockout seconds), even with the right password;
    - a good client from another address logs in at once meanwhile, and SMTP keeps working;
    - once the address has been quiet for auth_lockout seconds it may log in again;
    - 200 addresses, four at a time, each answered with its late failure: no session runs out of
      memory while the throttle's table is full; and all of it takes seconds."""
    board = hostile_board(make_board, auth_fail_delay_ms=100, auth_max_failures=5, auth_lockout=2)
    warm_up(board)
    started = time.monotonic()
    rng = random.Random(1000)
    attacker = "127.0.0.1"
    pop3 = connect_from(attacker, board.pop3_port)
    assert pop3.recv(100).startswith(b"+OK")
    smtp = connect_from(attacker, board.smtp_port)
    assert smtp.recv(100).startswith(b"220")
    smtp.sendall(b"EHLO guesser.example\r\n")
    time.sleep(0.2)
    smtp.recv(1000)
    checked = refused = 0
    good_logins = []
    batches = 0
    while batches < 18:  # 50 attempts every 0.25 s: 900 attempts over 4.5 s, twice the lock-out
        batches += 1
        attempts = [(rng.choice(["alice", "bob", "nobody", "root", "admin"]), "guess{}".format(rng.random()),
                     rng.choice(["user", "plain"])) for _ in range(40)]
        for reply in pop3_attempts(pop3, attempts):
            if reply == "-ERR [AUTH] Authentication failed.":
                checked += 1
            elif reply == "-ERR [SYS/TEMP] Too many failed logins, try again later.":
                refused += 1
            else:
                pytest.fail("unexpected reply {!r}".format(reply))
        smtp.sendall(b"".join(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0guess%d" % i) + b"\r\n" for i in range(10)))
        buf = b""
        while buf.count(b"\r\n") < 10:
            chunk = smtp.recv(4096)
            assert chunk
            buf += chunk
        for reply in buf.split(b"\r\n")[:10]:
            if reply == b"535 5.7.8 Authentication credentials invalid":
                checked += 1
            elif reply == b"454 4.7.0 Temporary authentication failure":
                refused += 1
            else:
                pytest.fail("unexpected reply {!r}".format(reply))
        if batches in (6, 12):
            # The right password from the guessing address: refused too.
            assert pop3_attempts(pop3, [("alice", "wonderland", "user")]) == ["-ERR [SYS/TEMP] Too many failed logins, try again later."]
            refused += 1
            # A good client from another address: in at once.
            t = time.monotonic()
            good = connect_from("127.0.0.2", board.pop3_port)
            good.recv(100)
            assert pop3_attempts(good, [("alice", "wonderland", "user")])[0].startswith("+OK Logged in")
            good.sendall(b"QUIT\r\n")
            good.recv(100)
            good.close()
            good_logins.append(time.monotonic() - t)
            deadline = time.monotonic() + 5
            while clients(board) > 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            # SMTP keeps delivering meanwhile.
            send_mail(board.smtp_port, b"Subject: during the guessing\r\n\r\nx")
        time.sleep(0.25)
    assert checked + refused == 18 * 50 + 2
    assert checked == 5, "{} password checks for the guessing address; the lock-out allows 5".format(checked)
    assert max(good_logins) < 1, good_logins
    pop3.close()
    smtp.close()
    # 100 from 100 other addresses (more than the throttle remembers): each a real, late check.
    spread = []

    def guess(sources):
        for source in sources:
            s = None
            try:
                s = connect_from(source, board.pop3_port)
                s.recv(100)
                spread.extend(pop3_attempts(s, [("alice", "nope", "user")]))
            except (OSError, AssertionError) as e:
                spread.append("{}: {}".format(source, e))
            finally:
                if s is not None:
                    s.close()

    def spread_out(sources):
        threads = [threading.Thread(target=guess, args=(sources[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    spread_out(["127.0.1.{}".format(i) for i in range(1, 101)])
    assert spread == ["-ERR [AUTH] Authentication failed."] * 100, ([r for r in spread if "[AUTH]" not in r], console_problems(board))
    assert time.monotonic() - started < 40
    # 100 more: the throttle forgets the addresses quiet longest (it keeps 32), and the heap
    # holds out.
    spread_out(["127.0.2.{}".format(i) for i in range(1, 101)])
    assert spread == ["-ERR [AUTH] Authentication failed."] * 200, ([r for r in spread if "[AUTH]" not in r], console_problems(board))
    assert board.heap_free() > 4096
    # Quiet for the lock-out: the first address may log in again.
    time.sleep(2.5)
    w = pop3_login(board.pop3_port)
    w.cmd("QUIT")
    w.close()
    assert board.proc.poll() is None
    assert not console_problems(board)
    card_tree(board, app_dir)


def test_sasl_responses_that_are_not_text_are_malformed(make_board):
    """8-bit bytes in an AUTH continuation line (found by the fuzzer): a protocol error, and the
    session goes on; not a failed session."""
    board = hostile_board(make_board, auth_fail_delay_ms=0)
    p = Wire(board.pop3_port)
    p.line()
    for mechanism, response in (("PLAIN", b"\xff\xfe"), ("LOGIN", b"\x80"), ("LOGIN", b"dXNlcg\xc3==")):
        assert p.cmd("AUTH " + mechanism).startswith("+ ")
        p.send(response + b"\r\n")
        assert p.line() == "-ERR Invalid base64 data or SASL message."
    assert p.cmd("CAPA") == "+OK Capability list follows"
    s = smtp_session(board.smtp_port)
    for mechanism, response in (("PLAIN", b"\xff\xfe"), ("LOGIN", b"\x80"), ("LOGIN", b"dXNlcg\xc3==")):
        assert s.cmd("AUTH " + mechanism).startswith("334 ")
        s.send(response + b"\r\n")
        assert s.line() == "501 5.5.2 Cannot decode response"
    assert s.cmd("NOOP") == "250 2.0.0 Ok"
    assert not console_problems(board)


# ---- paths and injections


def test_paths_and_injections_are_refused_and_create_no_file(make_board, app_dir):
    """User names and addresses that try to leave the mailbox folder or break the protocol: `..`,
    `/`, NUL, CR, LF, 8-bit, parts over the RFC 5321 limits (local part 64, domain 255, path 256
    octets). Each gets its exact reply, and the card holds nothing but the mailbox folders."""
    # Many refused commands in one session: more than max_bad_commands (10) would let through.
    board = hostile_board(make_board, auth_fail_delay_ms=0, auth_max_failures=1000, max_bad_commands=100)
    longest = "l" * 64
    board.add_user(longest, "long")
    board.add_user("apopper", "x", apop="sesame")
    users = dict(PASSWORDS, apopper="x", **{longest: "long"})
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"
    domain_252 = ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 60])
    assert len(domain_252) == 252
    cases = [
        ("../../etc@pocketpost.local", "550 5.1.1"),
        ("../alice@pocketpost.local", "550 5.1.1"),
        ("alice/../bob@pocketpost.local", "550 5.1.1"),
        ("a/b@pocketpost.local", "550 5.1.1"),
        ("/sd/tmp/x@pocketpost.local", "550 5.1.1"),
        ("..@pocketpost.local", "550 5.1.1"),
        (".@pocketpost.local", "550 5.1.1"),
        (".hidden@pocketpost.local", "550 5.1.1"),
        ('"../x"@pocketpost.local', "550 5.1.1"),
        ('"a\\/b"@pocketpost.local', "550 5.1.1"),
        ("index@pocketpost.local", "550 5.1.1"),
        ("ALICE/..@pocketpost.local", "550 5.1.1"),
        ("a\\b@pocketpost.local", "550 5.1.1"),
        (longest + "@pocketpost.local", "250 2.1.5"),  # the longest local part: a user
        ("m" * 64 + "@pocketpost.local", "550 5.1.1"),  # as long, no such user
        ("m" * 65 + "@pocketpost.local", "501 5.1.3"),  # one octet too long
        ("a@" + domain_252, "550 5.7.1"),  # a path of 256 octets: fine, but not ours
        ("ab@" + domain_252, "501 5.1.3"),  # 257
        ("a@" + "d" * 64 + ".org", "501 5.1.3"),  # a label over 63
        ("alice@" + "d" * 256, "501 5.1.3"),  # a domain over 255
        ("alice@pocketpost..local", "501 5.1.3"),
        ("alice@[127.0.0.1]", "550 5.7.1"),
    ]
    for address, reply in cases:
        got = w.cmd("RCPT TO:<{}>".format(address))
        assert got.startswith(reply), (address, got)
    # Bytes that are not text, and line ends inside the command.
    for raw, reply in (
        (b"RCPT TO:<al\x00ice@pocketpost.local>\r\n", "500 5.5.2"),
        (b"RCPT TO:<al\rice@pocketpost.local>\r\n", "500 5.5.2"),
        (b"RCPT TO:<\xc3\xa4lice@pocketpost.local>\r\n", "500 5.5.2"),
        (b"RCPT TO:<alice@pocketpost.local\x1b>\r\n", "500 5.5.2"),
    ):
        w.send(raw)
        got = w.line()
        assert got.startswith(reply), (raw, got)
    # A bare LF ends the line: what follows is another command, judged on its own.
    w.send(b"RCPT TO:<alice@pocketpost.local\nRCPT TO:<../x@pocketpost.local>\r\n")
    assert w.line().startswith("501 5.1.3")
    assert w.line().startswith("550 5.1.1")
    assert w.cmd("RCPT TO:<{}>".format("x" * 300 + "@pocketpost.local")).startswith("501 5.1.3")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: injection\r\n\r\nx\r\n.\r\n")
    assert w.line().startswith("250 2.0.0")
    # Senders are never file names, but their syntax and length are checked.
    for address, reply in (("../../x@example.org", "250 2.1.0"), ("a" * 65 + "@example.org", "501 5.1.7"),
                           ("a@" + "d" * 256, "501 5.1.7"), ("ab@" + domain_252, "501 5.1.7")):
        w.cmd("RSET")
        got = w.cmd("MAIL FROM:<{}>".format(address))
        assert got.startswith(reply), (address, got)
    w.send(b"RSET\r\nMAIL FROM:<a\x00b@example.org>\r\n")
    assert w.line() == "250 2.0.0 Ok"
    assert w.line().startswith("500 5.5.2")
    # AUTH with names that would leave the users folder.
    w.cmd("RSET")
    for name in ("../alice", "alice/../alice", "/flash/users/alice", "ALICE", "alice\x00"):
        token = base64.b64encode(b"\0" + name.encode() + b"\0wonderland").decode()
        # A NUL in the name is one field too many for PLAIN (RFC 4616): a malformed response.
        expected = "501 5.5.2 Cannot decode response" if "\x00" in name else "535 5.7.8 Authentication credentials invalid"
        assert w.cmd("AUTH PLAIN " + token) == expected, name
    w.cmd("QUIT")
    # POP3: the same names, as USER, AUTH and APOP (a line over 255 octets is refused as such).
    p = Wire(board.pop3_port)
    assert "<" in p.line()  # APOP is on: a user has a secret
    for name in ("../alice", "alice/../alice", "../../flash/users/alice", "alice\x00", "ALICE", ".", "..",
                 "alice.", "l" * 65, "a" * 240):
        assert p.cmd("USER " + name) == "+OK Send PASS."
        assert p.cmd("PASS wonderland") == "-ERR [AUTH] Authentication failed.", name
        token = base64.b64encode(b"\0" + name.encode() + b"\0wonderland").decode()
        for line in ("AUTH PLAIN " + token, "APOP {} 0123456789abcdef0123456789abcdef".format(name)):
            if len(line) + 2 > 255:
                expected = "-ERR Line too long."
            elif "\x00" in name and line.startswith("AUTH"):
                expected = "-ERR Invalid base64 data or SASL message."  # one field too many
            else:
                expected = "-ERR [AUTH] Authentication failed."
            assert p.cmd(line) == expected, line
    assert p.cmd("USER " + "a" * 300) == "-ERR Line too long."
    p.send(b"USER alice\rPASS wonderland\r\n")
    assert p.line() == "+OK Send PASS."  # the user name "alice\rPASS wonderland": not a user
    assert p.cmd("PASS wonderland") == "-ERR [AUTH] Authentication failed."
    assert p.cmd("USER alice") == "+OK Send PASS."
    assert p.cmd("PASS wonderland").startswith("+OK Logged in")
    for arg in ("../1", "1/..", "-1", "0", "1\x00", "99999999999", "1 1", "１"):
        assert p.cmd("RETR " + arg).startswith("-ERR"), arg
        assert p.cmd("DELE " + arg).startswith("-ERR"), arg
    assert p.cmd("QUIT") == "+OK Logging out."
    # The console refuses such names too.
    for name in ("../x", "a/b", ".x", "alice.", "alice..", "a\x00", "A"):
        with pytest.raises(Exception):
            board.add_user(name, "x")
    assert well_behaved_client(board, ALICE_KNOWN + [b"Subject: injection\r\n\r\nx\r\n"]) < 5
    assert not console_problems(board)
    tree = card_tree(board, app_dir, users)
    assert "/sd/mail/" + longest in tree  # the longest name is a folder like any other
