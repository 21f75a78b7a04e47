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


class Envelope:
    """A queued message's envelope. Recipients are kept as their envelope lines
    ("P\taddress", "D\taddress", "B\taddress\treply"): one string each."""

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

    def pending(self):
        return [r[2:] for r in self.rcpts if r[0] == PENDING]

    def set_state(self, address, state, reply=""):
        for i, r in enumerate(self.rcpts):
            if r[0] == PENDING and r[2:] == address:
                self.rcpts[i] = "{}\t{}\t{}".format(state, address, reply) if reply else state + "\t" + address
                return

def paths(store, qid):
    base = "{}/{}".format(folder(store), qid)
    return base + ".MSG", base + ".ENV"


def _clean(text):
    # A reply or error as one envelope line's field: no tabs or line ends, 200 characters.
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")[:200]


def write(store, env, suffix="NEW"):
    """Writes the envelope as <ID>.<suffix>, then puts it in place of <ID>.ENV (see the module
    comment)."""
    base = "{}/{}".format(folder(store), env.id)
    tmp = base + "." + suffix
    with open(tmp, "w") as f:
        f.write("{}\nid {}\ncreated {}\nfrom {}\nsize {}\nskip {}\ntries {}\nnext {}\nerror {}\n".format(
            FORMAT, env.id, env.created, env.sender, env.size, env.skip, env.tries, env.next, _clean(env.error)))
        for r in env.rcpts:
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
                env.rcpts.append(line)
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
    """The IDs of the queued messages (bounded by the queue's limit on messages)."""
    out = []
    try:
        for entry in os.ilistdir(folder(store)):
            name = entry[0]
            if name.endswith(".ENV"):
                out.append(name[:-4])
    except OSError:
        pass
    return out


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
