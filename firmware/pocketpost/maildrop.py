# A POP3 session's view of a locked mailbox (RFC 1939): the messages present at login, numbered
# from 1, and the deletion marks. Per message it keeps one bit in RAM, in blocks of 128 octets
# (1,024 messages: a 10,000-message mailbox takes 10 small blocks, never one large one that a
# fragmented heap may not have); sequence numbers and sizes are read from the index on the card
# when a command needs them.
import asyncio
import time

from micropython import const

from . import unload
from .heap import PATIENT, with_relief
from .mailbox import DELETE_COMMITTED, DELETE_WRITTEN, RECORD, parse_record, read_records

# Index records read at a time (LIST, UIDL, the deletion journal); also TOP's file buffer.
_RECORDS_PER_READ = const(12)
# Longest stretch (ms) the removal of deleted messages keeps the processor (see update).
_TURN_MS = const(20)
# Deletion marks: octets in a block, and log2 of the messages a block holds.
_MARK_BLOCK = const(128)
_MARK_SHIFT = const(10)
_MARK_MASK = const(1023)


class Maildrop:
    def __init__(self, store, name):
        """Opens the user's mailbox (creating it when new) and counts what is in it now."""
        self.box = store.existing_mailbox(name)
        self.buf = bytearray(RECORD * _RECORDS_PER_READ)
        # Records read for `message`, which RETR, DELE and LIST n mostly ask for in order.
        self.cache = bytearray(RECORD * _RECORDS_PER_READ)
        self.cache_first = 0  # number of the first message cached; 0: none
        self.cache_count = 0
        self.uid_prefix = self.box.uid_prefix(memoryview(self.cache)[:RECORD]).encode()
        self.count, self.octets = self.box.totals(self.buf)  # later deliveries wait for the next session
        # UIDLs kept from another server by an import (kept_uidls.py): how many.
        self.kept = self.box.kept_uidls()
        self.deleted = [bytearray(_MARK_BLOCK) for _ in range((self.count + _MARK_MASK) >> _MARK_SHIFT)]
        self.deleted_count = 0
        self.deleted_octets = 0
        self.retried = False  # the deletion ran short and was tried again (update)

    def is_deleted(self, n):
        n -= 1
        return self.deleted[n >> _MARK_SHIFT][(n & _MARK_MASK) >> 3] & (1 << (n & 7))

    def message(self, n):
        """(seq, size) of message n, or None when there is no such message or it is deleted."""
        if not 1 <= n <= self.count or self.is_deleted(n):
            return None
        i = n - self.cache_first
        if not self.cache_first or not 0 <= i < self.cache_count:
            with open(self.box.index, "rb") as f:
                f.seek(n * RECORD)
                got = f.readinto(self.cache) // RECORD
            if not got:
                raise ValueError("index shorter than expected")
            self.cache_first = n
            self.cache_count = min(got, self.count - n + 1)
            i = 0
        return parse_record(self.cache, i * RECORD)

    def uidl(self, seq):
        """The UIDL of message `seq`: the one it kept from another server, else the card's."""
        if self.kept:
            kept = _kept_uidls(self)
            try:
                found = kept.find(seq)
            finally:
                kept.close()
            if found is not None:
                return found
        return b"%s%d" % (self.uid_prefix, seq)

    def path(self, seq):
        return self.box.message_path(seq)

    def _records(self):
        """Yields (n, seq, size) of every message of this session, deleted or not."""
        buf = self.buf
        n = 0
        with open(self.box.index, "rb") as f:
            f.seek(RECORD)
            for off in read_records(f, buf):
                n += 1
                if n > self.count:
                    return
                seq, size = parse_record(buf, off)
                yield n, seq, size

    def listing(self, uids):
        """Yields the lines of LIST (uids False) or UIDL (True) for every message not deleted,
        in order (one loop and one allocation a line: it runs once per message)."""
        buf = self.buf
        prefix = self.uid_prefix
        deleted = self.deleted
        n = 0
        # Kept UIDLs are read alongside the index: both files are in seq order.
        kept = _kept_uidls(self) if uids and self.kept else None
        try:
            with open(self.box.index, "rb") as f:
                f.seek(RECORD)
                while n < self.count:
                    got = f.readinto(buf)
                    if not got:
                        return
                    for off in range(0, got - got % RECORD, RECORD):
                        n += 1
                        if n > self.count:
                            return
                        i = n - 1
                        if not deleted[i >> _MARK_SHIFT][(i & _MARK_MASK) >> 3] & (1 << (i & 7)):
                            seq, size = parse_record(buf, off)
                            if not uids:
                                yield b"%d %d\r\n" % (n, size)
                                continue
                            uidl = kept.next_for(seq) if kept else None
                            if uidl is not None:
                                yield b"%d %s\r\n" % (n, uidl)
                            else:
                                yield b"%d %s%d\r\n" % (n, prefix, seq)
        finally:
            if kept:
                kept.close()

    def mark_deleted(self, n, size):
        n -= 1
        self.deleted[n >> _MARK_SHIFT][(n & _MARK_MASK) >> 3] |= 1 << (n & 7)
        self.deleted_count += 1
        self.deleted_octets += size

    def unmark_all(self):
        for block in self.deleted:
            for i in range(_MARK_BLOCK):
                block[i] = 0
        self.deleted_count = 0
        self.deleted_octets = 0

    def visible(self):
        """(messages, octets) not marked deleted, for STAT."""
        return self.count - self.deleted_count, self.octets - self.deleted_octets

    def _deleted_seqs(self):
        for n, seq, _ in self._records():
            if self.is_deleted(n):
                yield seq

    async def update(self, relieve):
        """The UPDATE state: removes the messages marked deleted; returns how many. The other
        tasks get turns while files are removed (see Mailbox.delete).

        It goes on from where an earlier call stopped (Mailbox.delete_step), so a QUIT that ran
        short of memory can be run again. A deletion that runs short goes on after `relieve()` has
        given heap back and the other sessions have had a moment (heap.with_relief): all again
        while its journal is not made (the index is as it was), committing the journal once it is
        made, finishing it once committed (each of whose steps can be redone:
        Mailbox.finish_purge). The messages are numbered by the index as it was at login, which
        only this session changes, so the journal is never made from an index already rewritten.
        Short every time: the MemoryError is the caller's, with `retried` set (running QUIT
        again would only repeat the tries)."""
        if not self.deleted_count:
            return 0
        going_on = with_relief(relieve, self._update_from_last_step, again=PATIENT)  # (short here: not begun)
        try:
            await going_on
        except MemoryError:
            self.retried = True
            raise
        return self.deleted_count

    async def _update_from_last_step(self):
        box = self.box
        step = box.delete_step
        if step == DELETE_COMMITTED:
            await _taking_turns(box.finish_purge(self.buf))
        elif step == DELETE_WRITTEN:
            await _taking_turns(box.commit_delete(self.buf))
        else:
            await _taking_turns(box.delete(self._deleted_seqs(), self.buf))


def _kept_uidls(drop):
    # The reader of the mailbox's kept UIDLs; its module is not kept loaded (the reader keeps
    # its class alive for as long as it is used).
    from . import kept_uidls

    unload(kept_uidls.__name__)
    return kept_uidls.KeptUidls(drop.box, drop.kept)


async def _taking_turns(steps):
    # Runs a generator of steps, letting the other tasks run every _TURN_MS.
    turn = time.ticks_ms()
    for _ in steps:
        if time.ticks_diff(time.ticks_ms(), turn) > _TURN_MS:
            await asyncio.sleep_ms(0)
            turn = time.ticks_ms()
