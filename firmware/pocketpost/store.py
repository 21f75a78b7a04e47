# The mail store on the SD card: mailboxes, the temp folder where messages are written before
# they become visible, the boot check, and the per-user maildrop locks.
#
#   <root>/mail/<user>/...  one mailbox per user (see mailbox.py)
#   <root>/tmp/             messages being received; emptied at boot
import asyncio
import os

from micropython import const

from .heap import relieve
from .mailbox import RECORD, Mailbox, path_exists, sync

_ENOSPC = const(28)
# Free space kept beyond a message's copies before a multi-recipient delivery starts: FAT needs
# clusters for folders and index growth too.
_SPACE_MARGIN = const(65536)


class MailStore:
    def __init__(self, root, log):
        self.root = root
        self.mail = root + "/mail"
        self.tmp = root + "/tmp"
        self.log = log
        self.locked = set()  # users with a POP3 session open
        self._tmp_counter = 0
        self.rec = bytearray(RECORD)  # scratch for single-record reads (no awaits while in use)
        # None once the boot check (recovery.py) has run to its end; until then the names of the
        # mailboxes it has checked: the others are checked when first opened.
        self.checked = set()
        # Mailboxes whose deletion was cut short by a shortage of memory (pop3.py, QUIT): the
        # journal, if committed, is finished when the mailbox is next opened.
        self.unfinished = set()

    def mailbox(self, name):
        return Mailbox(self.mail, name)

    def existing_mailbox(self, name):
        """The user's mailbox, created (empty) if it does not exist yet; checked first when the
        boot check has not reached it (MemoryError when the heap is too short for that now)."""
        if self.checked is not None and name not in self.checked:
            self._check(name)
        box = self.mailbox(name)
        if name in self.unfinished:
            for _ in box.finish_purge(bytearray(RECORD * 12)):
                pass
            self.unfinished.discard(name)
        if not box.exists():
            box.create()
        return box

    def space(self):
        """(total, free) octets on the card."""
        st = os.statvfs(self.root)
        return st[0] * st[2], st[0] * st[3]

    def _check(self, name):
        from . import recovery, unload

        try:
            recovery.check_mailbox(self, name, bytearray(RECORD * 12))
        finally:
            unload(recovery.__name__)

    # ---- maildrop locks (RFC 1939: exclusive access for the whole session)

    def lock(self, name):
        if name in self.locked:
            return False
        self.locked.add(name)
        return True

    def unlock(self, name):
        self.locked.discard(name)

    # ---- receiving

    def tmp_path(self):
        """A new name in the temp folder (one no file has, while the boot check has not emptied
        the folder: a file left there may share clusters with a message, see recovery.py)."""
        while True:
            self._tmp_counter += 1
            path = "{}/m{}".format(self.tmp, self._tmp_counter)
            if self.checked is None or not path_exists(path):
                return path

    def incoming(self):
        return Incoming(self, self.tmp_path())

    def remove_mailbox(self, name):
        """Deletes a mailbox folder and everything in it."""
        box = self.mailbox(name)
        _remove_tree(box.dir)


def _remove_tree(path):
    for entry in os.ilistdir(path):
        child = "{}/{}".format(path, entry[0])
        if entry[1] == 0x4000:
            _remove_tree(child)
        else:
            os.remove(child)
    os.rmdir(path)


class Incoming:
    """A message being received: written to a temp file, then moved into each recipient's
    mailbox. Until `commit` returns it is visible nowhere."""

    def __init__(self, store, path):
        self.store = store
        self.path = path
        self.size = 0
        self.error = None
        # The message is here for a commit: False once one placed a copy or gave it up, True
        # again when one ran short of memory before placing any (see commit).
        self.kept = True
        try:
            self.file = open(path, "wb")
        except OSError as e:
            self.file = None
            self.error = e

    def write(self, data, off, n):
        """Appends data[off:off + n] to the message. Raises OSError when the card fails (no
        try block here: see netio.py); the caller records it with `failed` and writes no more."""
        if self.error is None:
            self.file.write(data, off, n)
            self.size += n
            if self.size == n:
                # FatFs writes a new file's folder entry (first cluster, size) only when the
                # file is flushed or closed: a power cut before that leaves the clusters
                # written so far owned by no file, lost to the card for good. Flushed after
                # its first write, the boot check's removal of the temp file frees them all.
                self.file.flush()

    def failed(self, error):
        """Records a write error: the message is not stored, whatever comes next."""
        self.error = error

    def discard(self):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        try:
            os.remove(self.path)
        except OSError:
            pass

    async def commit(self, names, buf):
        """Delivers one copy to each named mailbox (`buf` is scratch space for making copies);
        returns {name: seq} (seq None for a copy moved in whose indexing ran short: the next
        delivery to that mailbox indexes it). On error nothing that was not yet delivered becomes visible, and
        the error is raised. A MemoryError before the first mailbox got its copy keeps the
        received message (only the extra copies go), so that commit can be called again once
        the heap is relieved; the caller discards it if it does not."""
        store = self.store
        self.kept = False
        if self.error is None and self.file is not None:
            try:
                self.file.close()  # FatFS writes the data and the folder entry here
            except OSError as e:
                self.error = e
            self.file = None
        if self.error is not None:
            self.discard()
            raise self.error
        copies = [self.path]
        try:
            # Every delivery leaves the margin free, one recipient or many: deleting mail (its
            # journal, the new index) needs clusters too, and on a card that mail has filled to
            # the last cluster nobody could delete mail to make room.
            total, free = store.space()
            if free < self.size * (len(names) - 1) + _SPACE_MARGIN:
                raise OSError(_ENOSPC)
            if len(names) > 1:
                for _ in range(len(names) - 1):
                    copy = store.tmp_path()
                    copies.append(copy)
                    await _copy_file(self.path, copy, buf)
        except OSError:
            _remove_all(copies)
            raise
        except MemoryError:
            _remove_all(copies[1:])  # the received message stays, for another commit
            self.kept = True
            raise
        # Every copy is complete; now they become visible, without yielding to other tasks.
        delivered = {}
        for i, name in enumerate(names):
            try:
                try:
                    box = store.existing_mailbox(name)
                    delivered[name] = box.deliver(copies[i], self.size, store.rec)
                except MemoryError:
                    if not delivered:
                        raise
                    # Others have their copy already: this one must have its own, or the
                    # client's retry would give them a second. Placing a copy takes a few small
                    # blocks, which the relief gives (nothing else runs meanwhile). A copy moved
                    # in but not yet indexed is delivered: the next delivery indexes it first.
                    box = None
                    relieve()
                    if path_exists(copies[i]):
                        box = store.existing_mailbox(name)
                        delivered[name] = box.deliver(copies[i], self.size, store.rec)
                    else:
                        delivered[name] = None
            # (One class a clause: a tuple of classes is made as the clause is tried, and on a
            # short heap its own MemoryError would skip the clean-up.)
            except MemoryError:
                # Short before the first copy was placed: the received message stays.
                self._placed_part_way(store, copies, i, delivered, i == 0 and path_exists(copies[0]))
                raise
            except OSError:
                self._placed_part_way(store, copies, i, delivered, False)
                raise
        sync()  # on the card before the client hears 250
        return delivered

    def _placed_part_way(self, store, copies, i, delivered, keep):
        # The copies not placed yet go (but the received message, when `keep`, for another try).
        _remove_all(copies[i + 1 if keep else i :])
        self.kept = keep
        if delivered:
            store.log.error("store", "delivery failed part-way; delivered to {}".format(", ".join(delivered)))


async def _copy_file(src, dst, buf):
    mv = memoryview(buf)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            fout.write(mv[:n])
            if fout.tell() == n:
                fout.flush()  # the first cluster into the folder entry (see Incoming.write)
            await asyncio.sleep_ms(0)  # let other clients run during a long copy


def _remove_all(paths):
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass
