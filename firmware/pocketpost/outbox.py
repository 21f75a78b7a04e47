# The relay queue on the SD card: mail for other domains, kept until the smarthost has it
# (relay.py sends it; enqueue.py puts mail in). Loaded when the queue is read, unloaded after:
# a board that relays nothing keeps none of this in its heap. Format: docs/storage.md.
#
#   <root>/queue/<ID>.MSG   the message as received (wire form: CRLF, dots unstuffed)
#   <root>/queue/<ID>.ENV   its envelope: sender, recipients and their state, retry times
#   <root>/queue/<ID>.TMP   an envelope being queued (removed at start-up with its .MSG)
#   <root>/queue/<ID>.NEW   an envelope being rewritten (replaces .ENV; see read)
#
# A message is queued by moving (or copying) the received file in as .MSG, then writing its
# envelope as .TMP, closing and syncing it, and renaming it to .ENV: the rename is the commit,
# made before the client hears 250. A retry rewrites only the small envelope: .NEW written and
# closed, the .ENV removed, .NEW renamed (FAT renames onto a name by removing it first, so a
# .NEW without an .ENV is a complete one). Every envelope ends with the line "end": one without
# it was cut short and is not used.
import array
import os
import time

from micropython import const

from .mailbox import sync

FORMAT = "pocketpost-queue 1"
# Recipients of other domains in one message (RFC 5321 §4.5.3.1.8: a client splits a longer
# list into several transactions when it hears 452 4.5.3).
MAX_RECIPIENTS = const(100)
# CA certificates kept for the smarthost (relay.ca.commit).
_MAX_CA = const(8)
# Longest envelope line read: "B", an address (256), a reply (200), tabs.
_MAX_LINE = const(600)
_MAX_ADDRESS = const(256)
# States of a recipient: pending, delivered (the smarthost took it), bounced.
PENDING = "P"
DELIVERED = "D"
BOUNCED = "B"


def folder(store):
    return store.root + "/queue"


def now_ms():
    return time.time_ns() // 1000000


def new_id():
    return "{:08X}".format(int.from_bytes(os.urandom(4), "big"))


class Recipients:
    """An envelope's recipients, read: their lines ("P\taddress", "D\taddress",
    "B\taddress\treply") in one buffer, each line's start in an array, the replies of bounced
    ones apart. One string object per recipient would take ~64 octets of a 64-bit heap each
    (7.7 KB for 100, as measured): here ~20. Indexing and iterating give the lines as text."""

    def __init__(self, size):
        self.buf = bytearray(size)  # "S\taddress\n" each; size: at most the envelope file's
        self.used = 0
        self.starts = array.array("H")
        self.replies = {}  # place: the reply that bounced it

    def __len__(self):
        return len(self.starts)

    def append(self, line):
        state, _, rest = line.partition("\t")
        address, _, reply = rest.partition("\t")
        data = "{}\t{}\n".format(state[:1], address).encode()
        end = self.used + len(data)
        if end > len(self.buf):
            raise ValueError("envelope longer than its file")
        self.buf[self.used : end] = data
        self.starts.append(self.used)
        self.used = end
        if reply:
            self.replies[len(self.starts) - 1] = reply

    def state(self, i):
        return chr(self.buf[self.starts[i]])

    def address(self, i):
        start = self.starts[i]
        return str(self.buf[start + 2 : self.buf.find(b"\n", start)], "utf-8")

    def __getitem__(self, i):
        reply = self.replies.get(i)
        line = "{}\t{}".format(self.state(i), self.address(i))
        return line + "\t" + reply if reply else line

    def __iter__(self):
        for i in range(len(self.starts)):
            yield self[i]

    def set_state(self, i, state, reply=""):
        self.buf[self.starts[i]] = ord(state)
        if reply:
            self.replies[i] = reply


class Envelope:
    """A queued message's envelope. `rcpts` is a Recipients once read (its lines "P\taddress",
    "D\taddress", "B\taddress\treply"), or, while it is queued (enqueue.py), a list of bare
    addresses."""

    def __init__(self, qid):
        self.id = qid
        self.created = 0  # ms since the epoch
        self.sender = ""
        self.size = 0  # octets of the .MSG file
        self.skip = 0  # octets at its start not sent on (the Return-Path field)
        self.tries = 0
        self.next = 0  # ms since the epoch of the next try
        self.error = ""  # the last try's outcome
        self.rcpts = []

    def has_pending(self):
        rcpts = self.rcpts
        for i in range(len(rcpts)):
            if rcpts.state(i) == PENDING:
                return True
        return False

    def pending_places(self):
        """The places in rcpts of the pending recipients: a bytearray, one octet each (rcpts
        holds at most MAX_RECIPIENTS), where a list of their addresses would copy them all."""
        rcpts = self.rcpts
        return bytearray(i for i in range(len(rcpts)) if rcpts.state(i) == PENDING)

    def set_state_at(self, i, state, reply=""):
        """Recipient `i` (pending) is delivered or bounced."""
        self.rcpts.set_state(i, state, reply)

def paths(store, qid):
    base = "{}/{}".format(folder(store), qid)
    return base + ".MSG", base + ".ENV"


def _clean(text):
    # A reply or error as one envelope line's field: no tabs or line ends, 200 characters.
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")[:200]


def write(store, env, suffix="NEW", state=""):
    """Writes the envelope as <ID>.<suffix>, then puts it in place of <ID>.ENV (see the module
    comment). With `state` ("P\t"), env.rcpts are bare addresses, each written after it."""
    base = "{}/{}".format(folder(store), env.id)
    tmp = base + "." + suffix
    with open(tmp, "w") as f:
        f.write("{}\nid {}\ncreated {}\nfrom {}\nsize {}\nskip {}\ntries {}\nnext {}\nerror {}\n".format(
            FORMAT, env.id, env.created, env.sender, env.size, env.skip, env.tries, env.next, _clean(env.error)))
        for r in env.rcpts:
            if state:
                f.write(state)
            f.write(r)
            f.write("\n")
        f.write("end\n")
    try:
        os.remove(base + ".ENV")
    except OSError:
        pass
    os.rename(tmp, base + ".ENV")
    sync()


def read(store, qid):
    """The envelope of message `qid`, or None when it has none (or a damaged one)."""
    base = "{}/{}".format(folder(store), qid)
    env = Envelope(qid)
    try:
        # The recipients' buffer: the file's size bounds it (a damaged file of any size: what
        # MAX_RECIPIENTS lines of the longest address take).
        env.rcpts = Recipients(min(os.stat(base + ".ENV")[6], MAX_RECIPIENTS * (_MAX_ADDRESS + 3)))
        f = open(base + ".ENV")
    except OSError:
        return None
    complete = False
    with f:
        if f.readline(_MAX_LINE).rstrip("\n") != FORMAT:
            return None
        for _ in range(MAX_RECIPIENTS + 16):
            line = f.readline(_MAX_LINE).rstrip("\n")
            if not line or line == "end":
                complete = line == "end"
                break
            if line[1:2] == "\t":
                try:
                    env.rcpts.append(line)
                except ValueError:  # longer than any envelope: damaged
                    return None
                continue
            key, _, value = line.partition(" ")
            if key in ("created", "size", "skip", "tries", "next"):
                setattr(env, key, int(value))
            elif key == "from":
                env.sender = value
            elif key == "error":
                env.error = value
    return env if complete and env.rcpts else None


def ids(store):
    """The IDs of the queued messages, packed: 4 octets each (a bytearray of 400 octets for a
    queue of 100, where a list of strings would take ~5 KB of a 64-bit heap); each() reads them."""
    out = bytearray()
    try:
        for entry in os.ilistdir(folder(store)):
            name = entry[0]
            if len(name) == 12 and name.endswith(".ENV"):
                try:
                    out.extend(int(name[:8], 16).to_bytes(4, "big"))
                except ValueError:
                    pass  # not a name the queue gives
    except OSError:
        pass
    return out


def each(packed):
    """The IDs in `packed` (ids()), as text, one at a time."""
    for i in range(0, len(packed) - 3, 4):
        yield "{:08X}".format(int.from_bytes(packed[i : i + 4], "big"))


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def remove(store, qid):
    msg, env = paths(store, qid)
    _remove(env)  # first: a message without an envelope is removed at the next start-up
    _remove(msg)
    sync()


def client_context(flash):
    """A TLS client context that verifies the smarthost with the CA certificates installed on
    the flash (/relay/ca0.der ... ca7.der, relay.ca.commit), or None when there are none. It
    takes ~3 KB of the heap in one block: boot.py makes it while the heap is in one piece."""
    import ssl

    context = None
    for i in range(_MAX_CA):
        try:
            f = open("{}/relay/ca{}.der".format(flash, i), "rb")
        except OSError:
            break
        with f:
            der = f.read()
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=der)
    return context
