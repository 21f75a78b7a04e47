# UIDLs kept from another server (card format 3, docs/storage.md): a mailbox's "uidls" file,
# fixed-size records in sequence order (mailbox.UIDL_RECORD), written by `pocketpost mailbox
# import` for messages whose POP3 clients know them by another server's UIDL. Only a mailbox
# that has the file loads this module, for a UIDL command, and forgets it after.
from micropython import const

from .mailbox import UIDL_RECORD

_PAD = const(32)  # a UIDL is padded with spaces to 70 octets


class KeptUidls:
    """A reader of a mailbox's file of kept UIDLs (`count` records): `next_for` walks it
    alongside the index (UIDL), `find` bisects it (UIDL n)."""

    def __init__(self, box, count):
        self.file = open(box.dir + "/uidls", "rb")
        self.count = count
        self.rec = bytearray(UIDL_RECORD)
        self.seq = self._read()

    def close(self):
        self.file.close()

    def _read(self):
        # The seq of the next record (read into rec); None at the end or at a damaged record,
        # whose messages then have the card's own UIDLs.
        rec = self.rec
        if self.file.readinto(rec) != UIDL_RECORD or rec[8] != 32 or rec[UIDL_RECORD - 1] != 10:
            return None
        try:
            return int(rec[:8])
        except ValueError:
            return None

    def _uidl(self):
        rec = self.rec
        end = UIDL_RECORD - 1
        while end > 9 and rec[end - 1] == _PAD:
            end -= 1
        return bytes(memoryview(rec)[9:end])

    def next_for(self, seq):
        """The kept UIDL of message `seq`, or None; `seq` ascending from one call to the next."""
        while self.seq is not None and self.seq < seq:
            self.seq = self._read()
        return self._uidl() if self.seq == seq else None

    def find(self, seq):
        """The kept UIDL of message `seq`, or None (any order)."""
        low, high = 0, self.count
        while low < high:
            mid = (low + high) >> 1
            self.file.seek(mid * UIDL_RECORD)
            found = self._read()
            if found is None:
                return None
            if found == seq:
                return self._uidl()
            if found < seq:
                low = mid + 1
            else:
                high = mid
        return None
