# One user's mailbox on the SD card, and the crash-safe changes made to it.
#
#   <dir>/index        a header, then one fixed-size record per message, in delivery order
#   <dir>/<shard>/<seq> the messages, in wire form; shard = seq // 100 keeps FAT folders small
#   <dir>/purge        the journal of a deletion (seqs to remove), present only while one runs
#   <dir>/uidls        UIDLs kept from another server (format version 3), only after an import
#
# The index lets a login read one file instead of listing and stat-ing every message (an fopen
# in a FAT folder of ~2,000 files takes 110+ ms on an ESP32 over SPI, esp-idf #4547). Records
# have a fixed size, so message N is found by seeking, and a session keeps nothing per message
# in RAM.
#
# Header: "+GGGGGGGG NNNNNNNNN\n": G the mailbox generation (random hex, chosen when the mailbox
# is made, part of every UID so a purged and re-created mailbox never repeats one), N the lowest
# sequence number never used. Record: "SSSSSSSS ZZZZZZZZZZ\n": the message's sequence number (its
# file name and UID) and its size in octets, both decimal.
#
# The header's first octet gives the folder layout: "+" 100 messages per folder; "#" 1,000 per
# folder, the first layout, which mailboxes made by earlier builds keep. FatFS finds a file by
# reading its folder from the start, 32 octets per entry: an open, stat or rename near the end of
# a 1,000-file folder reads 32 KB of the card, of a 100-file folder 3 KB.
import os

from micropython import const

RECORD = const(20)
PER_FOLDER = const(100)
_LEGACY_PER_FOLDER = const(1000)
_MARK = const(43)  # "+"
_LEGACY_MARK = const(35)  # "#"
# A record of <dir>/uidls, written by `pocketpost mailbox import` for messages whose POP3 clients
# know them by a UIDL of another server (Dovecot's "000000016553f100"), ascending by seq:
# "SSSSSSSS " + the UIDL (RFC 1939: 1-70 octets 0x21-0x7E) padded with spaces to 70 + "\n". A
# fixed size, so UIDL n is found by bisection; records of deleted messages may stay (a seq is
# never used twice, so they match nothing).
UIDL_RECORD = const(80)
# How far Mailbox.delete came (Mailbox.delete_step).
DELETE_WRITTEN = const(1)
DELETE_COMMITTED = const(2)
# Sequence numbers have 8 digits: message names stay 8.3 names on FAT (no long-name entries).
_MAX_SEQ = const(99999999)


# os.sync writes back every mounted file system's caches. The ESP32 port has it; the unix port
# has not (its block devices write straight to the image file).
sync = getattr(os, "sync", None) or (lambda: None)


def path_exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def record_bytes(seq, size):
    return "{:08d} {:010d}\n".format(seq, size).encode()


def parse_record(mv, off):
    """(seq, size) of the record at mv[off:]; raises ValueError when it is damaged."""
    if mv[off + 8] != 32 or mv[off + 19] != 10:
        raise ValueError("bad record")
    return int(mv[off : off + 8]), int(mv[off + 9 : off + 19])


def read_records(f, buf):
    """Yields the offsets in `buf` of consecutive records read from `f` (positioned at a
    record); `buf` is reused for each chunk, so a record must be parsed before the next yield."""
    mv = memoryview(buf)
    span = len(buf) // RECORD * RECORD
    while True:
        n = f.readinto(mv[:span])
        if not n:
            return
        for off in range(0, n - n % RECORD, RECORD):
            yield off
        if n % RECORD:
            return  # a damaged tail; recovery trims it


class Mailbox:
    def __init__(self, parent, name):
        self.name = name
        self.dir = "{}/{}".format(parent, name)
        self.index = self.dir + "/index"
        # Messages per folder: known once the header has been read (create, read_header).
        self.per_folder = None
        # How far the last delete() came: a caller that ran short of memory part-way goes on
        # from there (DELETE_WRITTEN: the journal made, not committed; DELETE_COMMITTED).
        self.delete_step = None

    # ---- layout

    def exists(self):
        return path_exists(self.index)

    def create(self, legacy=False):
        """Makes the folder and an empty index with a new generation; `legacy` keeps the
        first folder layout (for an index rebuilt over folders made by an earlier build)."""
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        self.per_folder = _LEGACY_PER_FOLDER if legacy else PER_FOLDER
        gen = int.from_bytes(os.urandom(4), "big")
        with open(self.index, "wb") as f:
            f.write(self._header_bytes(gen, 1))

    def _header_bytes(self, gen, next_seq):
        mark = "#" if self.per_folder == _LEGACY_PER_FOLDER else "+"
        return "{}{:08x} {:09d}\n".format(mark, gen, next_seq).encode()

    def folder(self, seq):
        """The folder that holds message `seq`."""
        return "{}/{}".format(self.dir, seq // self.per_folder)

    def message_path(self, seq):
        return "{}/{}/{}".format(self.dir, seq // self.per_folder, seq)

    def read_header(self, f, rec):
        """(generation, lowest unused seq) from the index header; learns the folder layout."""
        f.seek(0)
        if f.readinto(rec) != RECORD or rec[0] not in (_MARK, _LEGACY_MARK) or rec[9] != 32 or rec[19] != 10:
            raise ValueError("bad index header")
        self.per_folder = PER_FOLDER if rec[0] == _MARK else _LEGACY_PER_FOLDER
        return int(bytes(rec[1:9]), 16), int(rec[10:19])

    def uid_prefix(self, rec):
        """The UID prefix of this mailbox: its generation in hex and a dot."""
        with open(self.index, "rb") as f:
            gen, _ = self.read_header(f, rec)
        return "{:08x}.".format(gen)

    def kept_uidls(self):
        """How many records the file of kept UIDLs has (0: none, the usual case)."""
        try:
            return os.stat(self.dir + "/uidls")[6] // UIDL_RECORD
        except OSError:
            return 0

    def count(self):
        """Number of records in the index."""
        return os.stat(self.index)[6] // RECORD - 1

    # ---- delivery

    def next_seq(self, rec):
        """The lowest sequence number that is neither indexed nor reserved by the header."""
        with open(self.index, "rb") as f:
            _, next_seq = self.read_header(f, rec)
            f.seek(0, 2)
            end = f.tell()
            if end >= 2 * RECORD:
                f.seek(end - end % RECORD - RECORD)
                if f.readinto(rec) == RECORD:
                    next_seq = max(next_seq, parse_record(rec, 0)[0] + 1)
        return next_seq

    def append(self, seq, size):
        with open(self.index, "ab") as f:
            f.write(record_bytes(seq, size))

    def deliver(self, tmp_path, size, rec):
        """Moves a complete message file into the mailbox and indexes it; returns its seq.

        A message file that exists but is not indexed (a crash between the rename and the index
        append) is indexed first, never renamed over: on FAT a rename onto a name deletes first."""
        seq = self.next_seq(rec)
        while True:
            if seq > _MAX_SEQ:
                raise OSError(28)  # this mailbox has used every name it can have
            path = self.message_path(seq)
            try:
                found = os.stat(path)[6]
            except OSError:
                break
            self.append(seq, found)
            seq += 1
        try:
            os.mkdir(self.folder(seq))
        except OSError:
            pass  # exists already
        os.rename(tmp_path, path)
        try:
            self.append(seq, size)
        except OSError:
            _remove(path)  # not indexed: take it back so the delivery fails as a whole
            raise
        return seq

    # ---- reading

    def totals(self, buf):
        """(messages, octets) from the index."""
        count = octets = 0
        with open(self.index, "rb") as f:
            f.seek(RECORD)
            for off in read_records(f, buf):
                count += 1
                octets += parse_record(buf, off)[1]
        return count, octets

    # ---- deletion: journal first, then the index, then the files; each step can be redone

    def delete(self, seqs, buf):
        """Removes the messages whose seqs the iterable yields (ascending). A generator that
        yields once per message file removed, so that an async caller lets the other clients
        (and a board's watchdog feeder) run between removals: on an ESP32's card each takes
        ~0.1 s, and a mailbox may lose thousands at one QUIT. Once the journal is written the
        deletion completes, now or at the next boot.

        `delete_step` says how far it came, for a caller that ran short of memory (or met a
        card error) part-way: None, nothing done that counts (do it all again); DELETE_WRITTEN,
        the journal made but not committed (go on with commit_delete: the seqs were read from
        the index as it was, which finishing an older journal may since have rewritten);
        DELETE_COMMITTED (go on with finish_purge)."""
        self.delete_step = None
        with open(self.dir + "/purge.new", "wb") as f:
            for seq in seqs:
                f.write("{:08d}\n".format(seq).encode())
        self.delete_step = DELETE_WRITTEN
        yield from self.commit_delete(buf)

    def commit_delete(self, buf):
        """Commits the journal delete() wrote and carries it out (a generator, as delete)."""
        journal = self.dir + "/purge"
        if path_exists(journal):
            # An earlier deletion stopped part-way (a card error) and left its journal: it was
            # committed, so it is finished first; a rename must never go over it.
            yield from self._purge(buf)
        os.rename(self.dir + "/purge.new", journal)
        self.delete_step = DELETE_COMMITTED
        yield from self._purge(buf)

    def finish_purge(self, buf):
        """Completes a journaled deletion: a generator yielding once per message file removed."""
        return self._purge(buf)

    def _purge(self, buf):
        # The journal's deletion: the index rewritten without its messages, then their files
        # removed (yielding after each), then the journal.
        journal = self.dir + "/purge"
        new = self.index + ".new"
        if path_exists(new):
            if path_exists(self.index):
                os.remove(new)  # an interrupted rewrite: redo it from the old index
            else:
                os.rename(new, self.index)  # the rewrite finished but was not renamed yet
        if not path_exists(journal):
            return
        rec = bytearray(RECORD)
        with open(journal, "rb") as purge, open(self.index, "rb") as old, open(new, "wb") as out:
            gen, next_seq = self.read_header(old, rec)
            gone = self._next_purged(purge, rec)
            out.write(self._header_bytes(gen, next_seq))  # rewritten below with the final value
            out.flush()  # its first cluster into its folder entry (see store.Incoming.write)
            for off in read_records(old, buf):
                try:
                    seq, _ = parse_record(buf, off)
                except ValueError:
                    break  # a damaged tail: it is dropped with the rewrite
                next_seq = max(next_seq, seq + 1)
                while gone is not None and gone < seq:
                    gone = self._next_purged(purge, rec)
                if seq != gone:
                    out.write(memoryview(buf)[off : off + RECORD])
            out.seek(0)
            out.write(self._header_bytes(gen, next_seq))
        os.remove(self.index)
        os.rename(new, self.index)
        with open(journal, "rb") as purge:
            while True:
                seq = self._next_purged(purge, rec)
                if seq is None:
                    break
                if _remove(self.message_path(seq)):
                    yield
        os.remove(journal)
        sync()

    @staticmethod
    def _next_purged(f, rec):
        # Journal lines are "SSSSSSSS\n" (9 octets).
        mv = memoryview(rec)[:9]
        if f.readinto(mv) != 9 or rec[8] != 10:
            return None
        return int(mv[:8])
