"""Machinery of the crash tests (tests/test_crash.py).

- A probe build of the firmware: the same compiled firmware with a different main.py, which adds
  one console request, `probe.arm {"after": N}`: the SD card's block device then stops dead (sleeps)
  before its Nth block write from now, after printing `PROBE stopped before SD write ...`. The test
  SIGKILLs the process there, so the card is left exactly between two block writes. A file
  `probe-arm` in the data folder holding N arms it from the start instead (a kill during the boot
  check); the probe removes the file, so the start after that is not armed. Picking N at
  random spreads the kills over every step of a delivery or a deletion (data, FAT, folder entry,
  rename, index, journal), which wall-clock kills mostly miss (they land while the server waits for
  the network). Nothing else in the firmware changes.
- `fsck`: Debian's fsck.fat -n on the image, its findings split into lost clusters (space that no
  file owns: leaked, harmless to the data) and everything else.
- `inspect_card`: what a power cut left on the card, read before the firmware boots again, so the
  test knows which repairs the boot check must make and log.
- The load: SMTP deliverers and POP3 deleters that record, in a `Ledger`, what the server promised.
"""

import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import sd_card
from emulated_board import EmulatedBoard

# The default card of the emulated board (64 MB) is FAT16 with 4 KB clusters.
CLUSTER = 4096

PROBE_MAIN = r'''
# pocketpost's main.py plus the crash probe of tests/crash_harness.py (see there).
import sys
import time

from pocketpost import console
from pocketpost.board import unix

_probe = [0, 0, False]  # SD block writes so far, the write to stop before (0: never), armed at boot
_writeblocks = unix.FileBlockDevice.writeblocks


def _probe_writeblocks(self, block, buf, offset=0):
    if self.block_size == 512:  # the SD card; the flash has 4096-octet blocks
        _probe[0] += 1
        if _probe[0] == _probe[1]:
            sys.stdout.write("PROBE stopped before SD write {}\n".format(_probe[0]))
            while True:
                time.sleep(1)
    _writeblocks(self, block, buf, offset)


def _arm(args):
    _probe[1] = _probe[0] + args["after"]
    return {"writes": _probe[0], "stop_before": _probe[1]}


def _writes(args):
    return {"writes": _probe[0]}


_console_init = console.Console.__init__


def _probe_console_init(self, *args):
    # The console starts after the boot check: a stop armed for the boot that has not come
    # is called off, and said so.
    if _probe[2]:
        sys.stdout.write("PROBE boot finished before SD write {}\n".format(_probe[1]))
        _probe[1] = 0
        _probe[2] = False
    _console_init(self, *args)


_request = console.Console._request
_PROBE_REQUESTS = {b"probe.arm": _arm, b"probe.writes": _writes}


def _probe_request(self, line):
    # The probe's two requests ("PP> ID probe.arm {...}") are answered here, the others by the
    # console as usual.
    parts = line.split(b" ", 3)
    probe = _PROBE_REQUESTS.get(parts[2]) if len(parts) > 2 else None
    if probe is None:
        return _request(self, line)
    import json

    result = probe(json.loads(parts[3]) if len(parts) > 3 else {})
    self.out.write("PP< " + parts[1].decode() + " ok " + json.dumps(result) + "\n")


unix.FileBlockDevice.writeblocks = _probe_writeblocks
console.Console.__init__ = _probe_console_init
console.Console._request = _probe_request

_arm_file = sys.argv[sys.argv.index("--data") + 1] + "/probe-arm"
try:
    with open(_arm_file) as f:
        _probe[1] = int(f.read())
        _probe[2] = True
    import os
    os.remove(_arm_file)
except OSError:
    pass

from pocketpost.board import open_board
from pocketpost.boot import start

app = start(open_board())
start = None
from pocketpost.app import run_until_stopped

run_until_stopped(app)
'''

PROBE_LINE = "PROBE stopped before SD write"
# Either line the probe prints when armed for a boot.
PROBE_BOOT_LINE = "PROBE "


def probe_app(app_dir, dest):
    """A copy of the compiled firmware `app_dir` whose main.py carries the crash probe."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(app_dir, dest)
    (dest / "main.py").write_text(PROBE_MAIN)
    return dest


# ---- fsck.fat

_FSCK_NOISE = re.compile(r"^(fsck\.fat \d.*|Leaving filesystem unchanged\.|.*: \d+ files, \d+/\d+ clusters|)$")
LOST = re.compile(r"^Reclaimed (\d+) unused clusters? \((\d+) bytes\)\.$")


class FsckReport:
    def __init__(self, code, text):
        self.code = code
        self.text = text
        self.findings = [line for line in text.splitlines() if not _FSCK_NOISE.match(line.strip())]
        self.lost_clusters = 0
        self.other = []
        for line in self.findings:
            m = LOST.match(line.strip())
            if m:
                self.lost_clusters += int(m.group(1))
            else:
                self.other.append(line)

    @property
    def clean(self):
        return self.code == 0 and not self.findings

    def summary(self):
        if self.clean:
            return "clean"
        return "; ".join(self.findings) or "exit {}".format(self.code)


def fsck(image):
    fsck_fat = shutil.which("fsck.fat") or "/sbin/fsck.fat"
    result = subprocess.run([fsck_fat, "-n", str(image)], capture_output=True, text=True, timeout=60)
    return FsckReport(result.returncode, result.stdout + result.stderr)


# ---- the card as a power cut left it

_INSPECT = """
import json
out = {"tmp": [], "boxes": {}}
try:
    out["tmp"] = [e[0] for e in os.ilistdir("/sd/tmp")]
except OSError:
    pass
try:
    names = [e[0] for e in os.ilistdir("/sd/mail") if e[1] == 0x4000]
except OSError:
    names = []
for name in names:
    box = "/sd/mail/" + name
    entries = {}
    files = {}
    for e in os.ilistdir(box):
        if e[1] == 0x4000:
            for m in os.ilistdir(box + "/" + e[0]):
                files[m[0]] = m[3]
        else:
            entries[e[0]] = e[3]
    index = None
    if "index" in entries:
        index = read(box + "/index").decode("latin-1")
    out["boxes"][name] = {"entries": entries, "files": files, "index": index}
print(json.dumps(out))
"""


def inspect_card(app_dir, image):
    """{"tmp": [names], "boxes": {user: {"entries": {name: size}, "files": {seq: size}, "index": text}}}"""
    return json.loads(sd_card.run(app_dir, image, _INSPECT).strip().splitlines()[-1])


def shared_clusters(report):
    """The pairs of files fsck.fat found sharing clusters, as paths ("/MAIL/ALICE/0/3")."""
    lines = report.text.splitlines()
    pairs = []
    for i, line in enumerate(lines):
        if line.strip() == "share clusters." and i >= 2 and lines[i - 2].endswith("  and"):
            pairs.append((lines[i - 2][: -len("  and")].strip(), lines[i - 1].strip()))
    return pairs


def cut_moves(report):
    """Moves from tmp/ into a mailbox that a power cut interrupted between FAT's two folder
    writes (the new entry written, the old one not yet removed): the two entries share the
    message's clusters. {(user, seq)} from fsck.fat's report of the card."""
    out = set()
    for a, b in shared_clusters(report):
        for mine, other in ((a, b), (b, a)):
            parts = mine.split("/")
            if len(parts) == 5 and parts[1] == "MAIL" and other.startswith("/TMP/"):
                out.add((parts[2].lower(), int(parts[4])))
    return out


def expected_repairs(card, raw=None):
    """What the boot check must log (as "WARN store: ..." lines) for the card `inspect_card`
    read and fsck.fat reported (`raw`): (required, allowed), both lists of line beginnings. Each
    required repair needs a line; each line must begin with a required or an allowed text.

    A move cut short (see `cut_moves`) is a repair of its own: the temp file cannot simply be
    removed (that frees the clusters the mailbox's file still uses). Whether the boot check keeps
    the message (indexed, on clusters of its own) or drops it (it was never acknowledged) is its
    choice; it must log something for that mailbox, and fsck must find the card sound after."""
    required = []
    allowed = []
    cut = cut_moves(raw) if raw is not None else set()
    if cut:
        allowed.append("removed ")
    elif card["tmp"]:
        required.append("removed {} partly received messages".format(len(card["tmp"])))
    for user, seq in sorted(cut):
        required.append("{}: ".format(user))
        allowed.append("{}: indexed message {} found after a crash".format(user, seq))
    for user, box in sorted(card["boxes"].items()):
        entries = box["entries"]
        prefix = "{}: ".format(user)
        if "purge" in entries or "index.new" in entries:
            required.append(prefix + "finished a deletion (")
            # The rewritten index decides which files come after it.
            allowed.append(prefix + "indexed message ")
            continue
        if "purge.new" in entries:
            required.append(prefix)  # dropping an unfinished journal is a repair, logged as any other
        index = box["index"]
        if index is None:
            required.append(prefix + "made a new index (the old one was missing)")
            allowed.append(prefix + "re-indexed ")
            continue
        if len(index) < 20 or index[0] not in "+#" or index[9] != " " or index[19] != "\n":
            required.append(prefix + "made a new index (the old header was damaged)")
            allowed.append(prefix + "re-indexed ")
            continue
        records = []
        damaged = len(index) % 20 != 0
        for off in range(20, len(index) - len(index) % 20, 20):
            rec = index[off : off + 20]
            if rec[8] != " " or rec[19] != "\n" or not rec[:8].isdigit() or not rec[9:19].isdigit():
                damaged = True
                break
            records.append(int(rec[:8]))
        if damaged:
            required.append(prefix + "trimmed a damaged index tail to {} records".format(len(records)))
        seq = max([int(index[10:19])] + [r + 1 for r in records[-1:]])
        while str(seq) in box["files"]:
            if (user, seq) not in cut:
                required.append(prefix + "indexed message {} found after a crash".format(seq))
            seq += 1
    return required, allowed


# ---- the load and what the server promised


MESSAGE_ID = re.compile(rb"\r\nSubject: crash (\S+)\r\n")


def make_message(msg_id, rng, size):
    """A message of about `size` octets ending in CRLF, with lines starting with dots, an empty
    line and a lone dot in the body."""
    lines = [b"From: crash tester <tester@example.org>", b"Subject: crash " + msg_id.encode(), b""]
    total = sum(len(x) + 2 for x in lines)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+/()"
    while total < size:
        r = rng.random()
        if r < 0.05:
            line = b"."
        elif r < 0.1:
            line = b""
        else:
            n = rng.randint(1, 140)
            line = bytes(rng.choice(alphabet) for _ in range(min(n, 40))) * (n // 40 + 1)
            line = line[:n]
            if rng.random() < 0.12:
                line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def stuff(message):
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def message_id(stored):
    m = MESSAGE_ID.search(stored)
    return m.group(1).decode() if m else None


class Ledger:
    """What the server promised, per mailbox.

    A message is `partial` while its DATA is being sent (the server cannot have it: the end of
    data was not sent), `doubt` once the end of data went out without a reply, `acked` after
    `250`, `refused` after any other reply. A deletion is `doubt` once QUIT went out and
    confirmed after `+OK`. Messages seen after a restart are `kept`; those not seen are `gone`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.content = {}  # id -> message as sent (unstuffed)
        self.rcpts = {}  # id -> mailboxes
        self.state = {}  # id -> partial / doubt / acked / refused / (after a check) kept / gone
        self.present = {}  # user -> {id: uid} after the last check
        self.deleted = {}  # user -> ids deleted by a confirmed QUIT: never to be seen again
        self.gone = {}  # user -> ids found absent once (unacknowledged): never to be seen again
        self.pending_deletes = []  # (user, frozenset of ids): QUIT sent, no reply
        self.errors = []  # replies or failures that are wrong whatever the kill did
        self.refusals = []  # temporary refusals (see Load._refused)

    def copy(self):
        other = Ledger()
        other.content = dict(self.content)
        other.rcpts = dict(self.rcpts)
        other.state = dict(self.state)
        other.present = {user: dict(ids) for user, ids in self.present.items()}
        other.deleted = {user: set(ids) for user, ids in self.deleted.items()}
        other.gone = {user: set(ids) for user, ids in self.gone.items()}
        other.pending_deletes = list(self.pending_deletes)
        return other

    def new(self, msg_id, message, rcpts):
        with self.lock:
            self.content[msg_id] = message
            self.rcpts[msg_id] = rcpts
            self.state[msg_id] = "partial"

    def set(self, msg_id, state):
        with self.lock:
            self.state[msg_id] = state

    def error(self, text):
        with self.lock:
            self.errors.append(text)


USERS = {"alice": "wonderland", "bob": "builder"}
# Every account the tests make (the crash load uses USERS).
PASSWORDS = dict(USERS, carol="singer")
DOMAIN = "pocketpost.local"


class Conn:
    """A small blocking line client."""

    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("latin-1")

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.line()

    def smtp_reply(self):
        while True:
            line = self.line()
            if len(line) < 4 or line[3] != "-":
                return line

    def multiline(self):
        probe_from = 0
        while True:
            probe = b"\r\n" + self.buf
            i = probe.find(b"\r\n.\r\n", probe_from)
            if i >= 0:
                end = i + 3
                data, self.buf = self.buf[:end], self.buf[end:]
                return data[:-3] if data.endswith(b".\r\n") else data
            probe_from = max(0, len(probe) - 4)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def unstuff(body):
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def strip_trace(stored):
    lines = stored.split(b"\r\n")
    i = 2
    while i < len(lines) and lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def message_size(rng):
    r = rng.random()
    if r < 0.70:
        return rng.randint(200, 4000)
    if r < 0.93:
        return rng.randint(8000, 64000)
    return rng.randint(150000, 400000)


class Load:
    """SMTP deliverers and POP3 deleters running against a board until `stop`."""

    def __init__(self, board, ledger, rng, tag, smtp_clients=2, pop3_clients=2):
        self.board = board
        self.ledger = ledger
        self.tag = tag
        self.stop = threading.Event()
        self.counter = 0
        self.threads = [
            threading.Thread(target=self._smtp, args=(random.Random(rng.random()), i), daemon=True)
            for i in range(smtp_clients)
        ] + [
            threading.Thread(target=self._pop3, args=(random.Random(rng.random()), users), daemon=True)
            for users in (list(USERS)[i::pop3_clients] for i in range(pop3_clients))
        ]
        self.deliveries = 0
        self.quits = 0

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self, timeout=30):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        return all(not t.is_alive() for t in self.threads)

    def _next_id(self, worker):
        with self.ledger.lock:
            self.counter += 1
            return "{}-s{}-{}".format(self.tag, worker, self.counter)

    def _unexpected(self, text):
        if not self.stop.is_set():
            self.ledger.error(text)

    def _refused(self, text):
        """A temporary refusal (SMTP 4xx, POP3 -ERR [SYS/TEMP] or [IN-USE]): legitimate for the
        protocols; what was refused must never show. The session is over."""
        if not self.stop.is_set():
            with self.ledger.lock:
                self.ledger.refusals.append(text)
        time.sleep(0.05)

    def _check(self, reply, good, what):
        """True when `reply` starts with `good`; otherwise records a refusal or an error."""
        if reply.startswith(good):
            return True
        if reply.startswith(("4", "-ERR [SYS/TEMP]", "-ERR [IN-USE]")):
            self._refused("{}: {}".format(what, reply))
        else:
            self._unexpected("{}: {}".format(what, reply))
        return False

    def _smtp(self, rng, worker):
        ledger = self.ledger
        while not self.stop.is_set():
            conn = None
            try:
                conn = Conn(self.board.smtp_port)
                if not self._check(conn.line(), "220 ", "greeting"):
                    continue
                conn.send(b"EHLO crash.example\r\n")
                if not self._check(conn.smtp_reply(), "250 ", "EHLO"):
                    continue
                for _ in range(rng.randint(1, 4)):
                    if self.stop.is_set():
                        break
                    rcpts = rng.choice((["alice"], ["bob"], ["alice", "bob"], ["alice"], ["bob"]))
                    msg_id = self._next_id(worker)
                    message = make_message(msg_id, rng, message_size(rng))
                    if not self._check(conn.cmd("MAIL FROM:<tester@example.org>"), "250 ", "MAIL"):
                        break
                    if not all(self._check(conn.cmd("RCPT TO:<{}@{}>".format(r, DOMAIN)), "250 ", "RCPT") for r in rcpts):
                        break
                    if not self._check(conn.cmd("DATA"), "354 ", "DATA"):
                        break
                    ledger.new(msg_id, message, rcpts)
                    data = stuff(message)
                    # Everything but the final ".\r\n": the server cannot end the message yet.
                    body, end = data[:-3], data[-3:]
                    for i in range(0, len(body), 65536):
                        conn.send(body[i : i + 65536])
                    ledger.set(msg_id, "doubt")
                    conn.send(end)
                    reply = conn.line()
                    if self._check(reply, "250 ", "end of data"):
                        ledger.set(msg_id, "acked")
                        self.deliveries += 1
                    else:
                        ledger.set(msg_id, "refused")
                        break
                else:
                    conn.cmd("QUIT")
            except (OSError, EOFError) as e:
                self._unexpected("smtp client {}: {!r}".format(worker, e))
                return
            finally:
                if conn is not None:
                    conn.close()

    def _pop3(self, rng, users):
        ledger = self.ledger
        turn = 0
        while not self.stop.is_set():
            user = users[turn % len(users)]
            turn += 1
            conn = None
            try:
                conn = Conn(self.board.pop3_port)
                if not self._check(conn.line(), "+OK", "greeting"):
                    continue
                conn.cmd("USER " + user)
                if not self._check(conn.cmd("PASS " + USERS[user]), "+OK", "login " + user):
                    continue
                reply = conn.cmd("STAT")
                if not self._check(reply, "+OK", "STAT"):
                    continue
                count = int(reply.split()[1])
                ids = {}
                for n in range(1, count + 1):
                    status = conn.cmd("TOP {} 0".format(n))
                    if not self._check(status, "+OK", "TOP"):
                        break
                    top = conn.multiline()
                    ids[n] = message_id(b"\r\n" + unstuff(top))
                    if ids[n] is None:
                        ledger.error("{} TOP {} has no message id: {} {!r}".format(user, n, status, top[-300:]))
                if len(ids) < count:
                    continue
                # Read one message whole and compare it while the server runs.
                if count:
                    n = rng.randint(1, count)
                    if not self._check(conn.cmd("RETR {}".format(n)), "+OK", "RETR"):
                        continue
                    got = strip_trace(unstuff(conn.multiline()))
                    if ledger.content.get(ids[n]) != got:
                        ledger.error("{} message {} ({}) differs while the server runs".format(user, n, ids[n]))
                share = 0.4 if count < 40 else 0.8
                doomed = [n for n in ids if ids[n] is not None and rng.random() < share]
                if not all(self._check(conn.cmd("DELE {}".format(n)), "+OK", "DELE") for n in doomed):
                    continue
                batch = frozenset(ids[n] for n in doomed)
                entry = (user, batch)
                with ledger.lock:
                    if batch:
                        ledger.pending_deletes.append(entry)
                if self._check(conn.cmd("QUIT"), "+OK", "QUIT"):
                    with ledger.lock:
                        if batch:
                            ledger.pending_deletes.remove(entry)
                            ledger.deleted.setdefault(user, set()).update(batch)
                    self.quits += 1
                # A QUIT refused stays in doubt: its deletion is done or not, all or nothing.
            except (OSError, EOFError, ValueError, IndexError) as e:
                self._unexpected("pop3 client {}: {!r}".format(user, e))
                return
            finally:
                if conn is not None:
                    conn.close()
            time.sleep(rng.uniform(0, 0.03))


# ---- one crash trial


def wait_line(board, text, start, timeout):
    """The first console line from index `start` on containing `text`, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for line in board.lines[start:]:
            if text in line:
                return line
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def boot_lines(board, start):
    """The console lines of the boot that began at line index `start`, up to "ready"."""
    out = []
    for line in board.lines[start:]:
        out.append(line)
        if "INFO boot: ready" in line:
            break
    return out


def read_mailbox(board, user):
    """[(uid, stored message, listed size)] of the user's mailbox, read by POP3; nothing deleted."""
    conn = Conn(board.pop3_port)
    try:
        conn.line()
        conn.cmd("USER " + user)
        reply = conn.cmd("PASS " + PASSWORDS[user])
        assert reply.startswith("+OK"), reply
        count = int(conn.cmd("STAT").split()[1])
        assert conn.cmd("UIDL").startswith("+OK")
        uids = [line.split()[1].decode() for line in conn.multiline().split(b"\r\n")[:-1]]
        assert conn.cmd("LIST").startswith("+OK")
        sizes = [int(line.split()[1]) for line in conn.multiline().split(b"\r\n")[:-1]]
        assert len(uids) == len(sizes) == count, (count, uids, sizes)
        out = []
        for n in range(1, count + 1):
            status = conn.cmd("RETR {}".format(n))
            assert status == "+OK {} octets".format(sizes[n - 1]), status
            out.append((uids[n - 1], unstuff(conn.multiline()), sizes[n - 1]))
        assert conn.cmd("QUIT").startswith("+OK")
        return out
    finally:
        conn.close()


def check_after_restart(board, ledger, warn_lines, users=tuple(USERS)):
    """Every promise kept after a restart; returns the problems found (empty when none) and
    settles the ledger: messages in doubt are now kept or gone, deletions in doubt done or not."""
    problems = []
    reindexed = {}  # user -> seqs the boot check indexed
    renewed = set()  # users whose index was made anew (UIDs change once)
    for line in warn_lines:
        m = re.search(r"WARN store: (\w+): indexed message (\d+) found after a crash", line)
        if m:
            reindexed.setdefault(m.group(1), set()).add(int(m.group(2)))
        m = re.search(r"WARN store: (\w+): made a new index", line)
        if m:
            renewed.add(m.group(1))
    present = {}
    for user in users:
        seen = {}
        mark = len(board.lines)
        try:
            mailbox = read_mailbox(board, user)
        except (OSError, EOFError, AssertionError, ValueError) as e:
            time.sleep(0.2)
            problems.append("{}: reading the mailbox failed: {!r}; console: {}".format(
                user, e, board.lines[mark:][-12:]))
            mailbox = []
        for uid, stored, size in mailbox:
            msg_id = message_id(stored)
            if size != len(stored):
                problems.append("{}: {} listed {} octets, RETR sent {}".format(user, uid, size, len(stored)))
            if msg_id is None or msg_id not in ledger.content:
                problems.append("{}: {} is no message that was sent: {!r}".format(user, uid, stored[:300]))
                continue
            if msg_id in seen:
                problems.append("{}: {} is there twice ({} and {})".format(user, msg_id, seen[msg_id], uid))
            seen[msg_id] = uid
            if strip_trace(stored) != ledger.content[msg_id]:
                problems.append("{}: {} ({}) is not byte-exact: {} octets, sent {}".format(
                    user, msg_id, uid, len(strip_trace(stored)), len(ledger.content[msg_id])))
            if user not in ledger.rcpts[msg_id]:
                problems.append("{}: {} was not addressed to this mailbox".format(user, msg_id))
            state = ledger.state[msg_id]
            if state in ("partial", "refused"):
                problems.append("{}: {} is visible but its DATA was {}".format(user, msg_id,
                                "never finished" if state == "partial" else "refused"))
            if msg_id in ledger.deleted.get(user, ()):
                problems.append("{}: {} came back after a confirmed deletion".format(user, msg_id))
            if msg_id in ledger.gone.get(user, ()):
                problems.append("{}: {} reappeared (it was not there after an earlier restart)".format(user, msg_id))
            before = ledger.present.get(user, {}).get(msg_id)
            if before is not None and before != uid and user not in renewed:
                problems.append("{}: {} changed UID {} -> {}".format(user, msg_id, before, uid))
            seq = int(uid.split(".")[1])
            if seq in reindexed.get(user, ()) and state != "doubt":
                problems.append("{}: the boot check indexed {} (seq {}), whose state was {}".format(user, msg_id, seq, state))
        present[user] = seen
    # Deletions in doubt: all of a QUIT's messages are gone, or none.
    doubtful = {}
    for user, batch in ledger.pending_deletes:
        left = batch & set(present.get(user, ()))
        if left and left != batch:
            problems.append("{}: a QUIT in doubt deleted {} of its {} messages".format(user, len(batch) - len(left), len(batch)))
        if not left:
            ledger.deleted.setdefault(user, set()).update(batch)
        doubtful.setdefault(user, set()).update(batch)
    # Every acknowledged message that no QUIT deleted is there.
    for msg_id, state in ledger.state.items():
        if state not in ("acked", "kept"):
            continue
        for user in ledger.rcpts[msg_id]:
            if user not in present:
                continue
            if (msg_id in present[user] or msg_id in ledger.deleted.get(user, ())
                    or msg_id in doubtful.get(user, ()) or msg_id in ledger.gone.get(user, ())):
                continue
            problems.append("{}: {} was acknowledged ({}) and is missing".format(user, msg_id, state))
    # Settle.
    for msg_id, state in ledger.state.items():
        if state in ("partial", "refused"):
            ledger.state[msg_id] = "gone"
        elif state in ("doubt", "acked"):
            ledger.state[msg_id] = "kept"
            for user in ledger.rcpts[msg_id]:
                if user in present and msg_id not in present[user] and msg_id not in ledger.deleted.get(user, ()):
                    ledger.gone.setdefault(user, set()).add(msg_id)
    ledger.pending_deletes = []
    ledger.present = present
    return problems


def match_repairs(required, allowed, warn_lines):
    """(missing, unexplained): required repairs without a WARN store line, and WARN store lines
    that no required or allowed repair explains."""
    texts = [line.split("WARN store: ", 1)[1] for line in warn_lines]
    missing = [e for e in required if not any(t.startswith(e) for t in texts)]
    unexplained = [t for t in texts if not any(t.startswith(e) for e in required + allowed)]
    return missing, unexplained


def copy_data(src, dest):
    """Copies a board's data folder (its card image is sparse: keep it so)."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in Path(src).iterdir():
        subprocess.run(["cp", "--sparse=always", str(item), str(dest / item.name)], check=True)
    return dest


def problems_on_console(lines, memory_ok=False):
    """Console lines that show the firmware failing: tracebacks, failed sessions, errors. With
    `memory_ok`, sessions ended for lack of heap (answered 421 / -ERR [SYS/TEMP], each with its
    traceback) are left out: the crash tests count them as temporary refusals (see test_crash.py)."""
    problems = [line for line in lines if "Traceback" in line or "session failed" in line or " ERROR " in line]
    if memory_ok:
        memory = [line for line in problems if "session failed: MemoryError" in line]
        problems = [line for line in problems if line not in memory]
        tracebacks = [line for line in problems if "Traceback" in line]
        if len(tracebacks) <= len(memory):
            problems = [line for line in problems if "Traceback" not in line]
    return problems


class ProbeBoard(EmulatedBoard):
    """An emulated board running the probe firmware."""

    boot_armed = False

    def start(self, timeout=30, until="INFO boot: ready"):
        if self.boot_armed:
            # The boot stops at the armed write, or says it finished before.
            self.boot_armed = False
            until = PROBE_BOOT_LINE
        return super().start(timeout, until)

    def arm_boot(self, after):
        """The next start stops before its `after`th SD write (a kill during the boot check)."""
        (self.data / "probe-arm").write_text(str(after))
        self.boot_armed = True


def clusters(size):
    """Clusters a stored message of `size` octets of content takes (with its trace fields)."""
    return (size + 512 + CLUSTER - 1) // CLUSTER


def settle_card(board, app_dir, ledger, record, lost_before, boot_kill=None):
    """After a power cut: fsck of the card as the cut left it, the repairs it needs, optionally
    a second power cut during the boot check (`boot_kill`: stop before that SD write of the boot),
    then a boot, the checks of every promise, a clean stop and fsck again. Fills `record`."""
    image = board.data / "sd.img"
    raw = fsck(image)
    record["fsck_after_kill"] = raw.summary()
    if boot_kill is not None:
        board.arm_boot(boot_kill)
        mark = len(board.lines)
        board.start()
        stopped = any(PROBE_LINE in line for line in board.lines[mark:])
        record["boot_kill"] = "boot stopped before SD write {}".format(boot_kill) if stopped else "boot finished before write {}".format(boot_kill)
        record["first_boot_log"] = [line.split(" ", 1)[1] for line in board.lines[mark:] if "WARN store: " in line]
        record["first_boot_problems"] = problems_on_console(board.lines[mark:])
        board.kill()
        raw = fsck(image)
        record["fsck_after_boot_kill"] = raw.summary()
    card = inspect_card(app_dir, image)
    record["card"] = {
        "tmp": len(card["tmp"]),
        "journals": sorted("{}/{}".format(u, n) for u, b in card["boxes"].items()
                           for n in b["entries"] if n in ("purge", "purge.new", "index.new")),
    }
    required, allowed = expected_repairs(card, raw)
    mark = len(board.lines)
    board.start()
    lines = boot_lines(board, mark)
    warn = [line for line in lines if "WARN store: " in line]
    record["boot_log"] = [line.split(" ", 1)[1] for line in warn]
    record["boot_problems"] = problems_on_console(lines) + record.pop("first_boot_problems", [])
    missing, unexplained = match_repairs(required, allowed, warn)
    record["repairs_not_logged"] = missing
    record["repairs_unexplained"] = unexplained
    record["problems"] = check_after_restart(board, ledger, warn)
    board.stop()
    after = fsck(image)
    record["fsck_after_boot"] = after.summary()
    record["fsck_other"] = after.other
    record["lost_clusters_new"] = after.lost_clusters - lost_before
    return after.lost_clusters


def lost_cluster_bound(ledger, writers):
    """The most lost clusters a power cut may leave after the boot check: one per file being
    created (`writers`: each SMTP session, and a POP3 session writing its journal or new index,
    creates at most one file at a time, and FatFs marks a new file's first cluster in the FAT
    before it writes the file's folder entry), plus, for each QUIT in doubt, the clusters of the
    largest file it removes (FatFs writes a removed file's folder entry before it frees its
    clusters, and the deletion removes one file at a time: a message, the old index, the
    journal)."""
    bound = writers
    for user, batch in ledger.pending_deletes:
        index = clusters(20 * (len(ledger.content) + 1))
        bound += max([index] + [clusters(len(ledger.content[msg_id])) for msg_id in batch])
    return bound


def failures(record):
    """What in a record breaks a promise (empty: all kept)."""
    out = []
    for key in ("client_errors", "console_problems", "boot_problems", "repairs_not_logged",
                "repairs_unexplained", "problems", "fsck_other"):
        if record.get(key):
            out.append("{}: {}".format(key, record[key]))
    if not record.get("clients_ended", True):
        out.append("a client did not end after the kill")
    if record["lost_clusters_new"] > record["lost_cluster_bound"]:
        out.append("the boot check left {} new lost clusters; at most {} may be lost (one per file being "
                   "created, plus what a deletion in progress was removing)".format(
                       record["lost_clusters_new"], record["lost_cluster_bound"]))
    return out


def format_record(r):
    at_kill = r.get("at_kill", "-")
    if r.get("refusals"):
        at_kill += "; {} temporary refusals before it ({} for lack of heap)".format(r["refusals"], r["memory_failures"])
    return "{} | {}{} | {} | tmp {} {} | {} | {} | {} (new lost {}, at most {})".format(
        r.get("trial", "-"), r["kill"], " / " + r["boot_kill"] if "boot_kill" in r else "", at_kill,
        r["card"]["tmp"], " ".join(r["card"]["journals"]), "; ".join(r["boot_log"]) or "-",
        r["fsck_after_kill"], r["fsck_after_boot"], r["lost_clusters_new"], r["lost_cluster_bound"])


REPORT_HEADER = "trial | kill | at kill | card before boot | boot log | fsck after kill | fsck after boot"


class CrashRun:
    """Power cuts under load on one board and one card, trial after trial (see test_crash.py)."""

    # A probe kill stops before one of the next this many SD writes (about a second of load).
    MAX_WRITES = 3000
    # A wall-clock kill comes this long after the load starts, at most (seconds).
    MAX_DELAY = 1.0
    SMTP_CLIENTS = 2
    POP3_CLIENTS = 1

    def __init__(self, board, app_dir, rng):
        self.board = board
        self.app_dir = app_dir
        self.rng = rng
        self.ledger = Ledger()
        self.records = []
        self.lost = 0

    def trial(self, number):
        board = self.board
        rng = self.rng
        ledger = self.ledger
        record = {"trial": number}
        load = Load(board, ledger, rng, "t{}".format(number), self.SMTP_CLIENTS, self.POP3_CLIENTS)
        mark = len(board.lines)
        if rng.random() < 0.6:
            after = rng.randint(1, self.MAX_WRITES)
            board.request("probe.arm", after=after)
            load.start()
            stopped = wait_line(board, PROBE_LINE, mark, 5)
            record["kill"] = "before SD write +{}".format(after) if stopped else "after 5 s (write +{} never came)".format(after)
        else:
            delay = rng.uniform(0.01, self.MAX_DELAY)
            load.start()
            time.sleep(delay)
            record["kill"] = "{:.3f} s into the load".format(delay)
        load.stop.set()
        board.kill()
        record["clients_ended"] = load.finish()
        with ledger.lock:
            record["at_kill"] = "{} awaiting 250, {} QUIT in doubt".format(
                sum(1 for st in ledger.state.values() if st == "doubt"), len(ledger.pending_deletes))
            record["lost_cluster_bound"] = lost_cluster_bound(ledger, self.SMTP_CLIENTS + self.POP3_CLIENTS)
        record["deliveries"] = load.deliveries
        record["quits"] = load.quits
        record["client_errors"] = list(ledger.errors)
        ledger.errors.clear()
        record["refusals"] = len(ledger.refusals)
        ledger.refusals.clear()
        record["memory_failures"] = sum(1 for line in board.lines[mark:] if "session failed: MemoryError" in line)
        record["console_problems"] = problems_on_console(board.lines[mark:], memory_ok=True)
        self.lost = settle_card(board, self.app_dir, ledger, record, self.lost)
        self.records.append(record)
        board.start()
        return record

    def report(self):
        return "\n".join([REPORT_HEADER] + [format_record(r) for r in self.records])


# ---- one operation, killed at a chosen write


def deliver_one(board, ledger, msg_id, message, rcpts):
    """One SMTP delivery, recorded in the ledger as the load does; returns the reply to the end
    of data, or what ended the connection."""
    conn = None
    try:
        conn = Conn(board.smtp_port)
        conn.line()
        conn.send(b"EHLO crash.example\r\n")
        conn.smtp_reply()
        for command in ["MAIL FROM:<tester@example.org>"] + ["RCPT TO:<{}@{}>".format(r, DOMAIN) for r in rcpts]:
            reply = conn.cmd(command)
            if not reply.startswith("250 "):
                return reply
        reply = conn.cmd("DATA")
        if not reply.startswith("354 "):
            return reply
        ledger.new(msg_id, message, rcpts)
        data = stuff(message)
        conn.send(data[:-3])
        ledger.set(msg_id, "doubt")
        conn.send(data[-3:])
        reply = conn.line()
        ledger.set(msg_id, "acked" if reply.startswith("250 ") else "refused")
        conn.cmd("QUIT")
        return reply
    except (OSError, EOFError) as e:
        return repr(e)
    finally:
        if conn is not None:
            conn.close()


def delete_some(board, ledger, user, numbers):
    """One POP3 session deleting messages `numbers`; returns the reply to QUIT, or what ended
    the connection."""
    conn = None
    try:
        conn = Conn(board.pop3_port)
        conn.line()
        conn.cmd("USER " + user)
        reply = conn.cmd("PASS " + PASSWORDS[user])
        if not reply.startswith("+OK"):
            return reply
        batch = set()
        for n in numbers:
            if not conn.cmd("TOP {} 0".format(n)).startswith("+OK"):
                return "TOP {} failed".format(n)
            batch.add(message_id(b"\r\n" + unstuff(conn.multiline())))
            reply = conn.cmd("DELE {}".format(n))
            if not reply.startswith("+OK"):
                return reply
        entry = (user, frozenset(batch))
        with ledger.lock:
            ledger.pending_deletes.append(entry)
        reply = conn.cmd("QUIT")
        if reply.startswith("+OK"):
            with ledger.lock:
                ledger.pending_deletes.remove(entry)
                ledger.deleted.setdefault(user, set()).update(batch)
        return reply
    except (OSError, EOFError) as e:
        return repr(e)
    finally:
        if conn is not None:
            conn.close()


def kill_during(board, app_dir, ledger, operation, after, writers=1, boot_kill=None, lost_before=0):
    """Runs `operation(board, ledger)` with the probe armed to stop before the `after`th SD
    write, SIGKILLs the firmware there (or once the operation is done), then `settle_card`.
    The board must be running; it is stopped when this returns. Returns the record."""
    record = {"trial": after}
    mark = len(board.lines)
    board.request("probe.arm", after=after)
    result = []
    thread = threading.Thread(target=lambda: result.append(operation(board, ledger)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and not any(PROBE_LINE in line for line in board.lines[mark:]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    stopped = any(PROBE_LINE in line for line in board.lines[mark:])
    record["kill"] = "before SD write {}".format(after) if stopped else "after the operation"
    board.kill()
    thread.join(30)
    record["clients_ended"] = not thread.is_alive()
    record["result"] = result[0] if result else None
    record["console_problems"] = problems_on_console(board.lines[mark:])
    record["lost_cluster_bound"] = lost_cluster_bound(ledger, writers) * (2 if boot_kill is not None else 1)
    record["stopped"] = stopped
    settle_card(board, app_dir, ledger, record, lost_before, boot_kill)
    return record
