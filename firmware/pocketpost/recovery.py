# The boot check of the mail store: repairs what an interrupted change left on the card. It runs
# once at boot; app.py then drops this module so its code does not occupy the heap afterwards.
import os

from .mailbox import PER_FOLDER, RECORD, parse_record, path_exists, read_records


def check_store(store, buf):
    """Makes the folders, empties the temp folder, repairs every mailbox; logs what it did.

    Its memory does not grow with the number of mailboxes or messages: folders are read entry
    by entry and nothing is listed. Each mailbox checked goes into `store.checked`, so when the
    heap runs short part-way (MemoryError, raised to the caller) the board can serve the
    mailboxes checked, check the others when first used, and run this again later."""
    log = store.log
    for path in (store.mail, store.tmp):
        try:
            os.mkdir(path)
        except OSError:
            pass
    _drop_cut_moves(store)
    leftovers = 0
    for entry in os.ilistdir(store.tmp):
        try:
            os.remove("{}/{}".format(store.tmp, entry[0]))
            leftovers += 1
        except OSError as e:
            log.error("store", "cannot remove tmp/{}: {}".format(entry[0], e))
    if leftovers:
        log.warn("store", "removed {} partly received messages".format(leftovers))
    for entry in os.ilistdir(store.mail):
        if entry[1] == 0x4000 and entry[0] not in store.checked:
            check_mailbox(store, entry[0], buf)


def check_mailbox(store, name, buf):
    """Repairs one mailbox (see recover) and counts it as checked."""
    try:
        for what in recover(store.mailbox(name), buf):
            store.log.warn("store", "{}: {}".format(name, what))
    except (OSError, ValueError) as e:
        store.log.error("store", "{}: boot check failed: {}".format(name, e))
    store.checked.add(name)


def _drop_cut_moves(store):
    # A move from tmp/ into a mailbox is a FAT rename: the new folder entry is written, then the
    # old one removed. Cut between the two, both entries share the message's clusters, and
    # removing the temp file would free clusters the mailbox's file still uses (FatFs would give
    # them to other files later). Such a message is its mailbox's first unindexed file and was
    # never acknowledged: both entries go (the second removal finds the clusters free already).
    # They share clusters when a byte written through the temp file shows through the other.
    # Both folders are read entry by entry (tmp/ once, mail/ once per temp file that has data).
    rec = bytearray(RECORD)
    for entry in os.ilistdir(store.tmp):
        if entry[3]:
            _drop_cut_move(store, entry[0], entry[3], rec)


def _drop_cut_move(store, name, tsize, rec):
    other = store.tmp + "/" + name
    for entry in os.ilistdir(store.mail):
        box = store.mailbox(entry[0])
        try:
            path = box.message_path(box.next_seq(rec))
            size = os.stat(path)[6]
        except (OSError, ValueError):
            continue
        if tsize != size:
            continue
        with open(path, "rb") as f:
            first = f.read(1)
        with open(other, "r+b") as f:
            f.write(bytes((first[0] ^ 255,)))
        with open(path, "rb") as f:
            if f.read(1) == first:
                continue
        os.remove(other)
        os.remove(path)
        store.log.warn("store", "{}: dropped a half-moved message".format(entry[0]))
        return


def recover(box, buf):
    """Finishes a journaled deletion, trims a damaged index tail, indexes a delivered message
    whose record was not written. Returns what was done, for the log."""
    done = []
    if path_exists(box.dir + "/purge.new"):
        os.remove(box.dir + "/purge.new")  # a journal never completed: nothing was deleted
        done.append("dropped an unfinished deletion")
    if path_exists(box.dir + "/purge") or path_exists(box.index + ".new"):
        done.append("finished a deletion ({} files)".format(sum(1 for _ in box.finish_purge(buf))))
    if not box.exists():
        done.append("made a new index (the old one was missing)")
        _reindex(box, done)
        return done
    rec = bytearray(RECORD)
    try:
        with open(box.index, "rb") as f:
            box.read_header(f, rec)
    except ValueError:
        os.remove(box.index)
        done.append("made a new index (the old header was damaged)")
        _reindex(box, done)
        return done
    kept = _valid_records(box, buf)
    if kept < box.count() or os.stat(box.index)[6] % RECORD:
        _truncate(box, kept, buf)
        done.append("trimmed a damaged index tail to {} records".format(kept))
    seq = box.next_seq(rec)
    while True:
        try:
            size = os.stat(box.message_path(seq))[6]
        except OSError:
            break
        box.append(seq, size)
        done.append("indexed message {} found after a crash".format(seq))
        seq += 1
    return done


def _valid_records(box, buf):
    kept = 0
    with open(box.index, "rb") as f:
        f.seek(RECORD)
        for off in read_records(f, buf):
            try:
                parse_record(buf, off)
            except ValueError:
                break
            kept += 1
    return kept


def _truncate(box, kept, buf):
    new = box.index + ".new"
    mv = memoryview(buf)
    left = (kept + 1) * RECORD
    with open(box.index, "rb") as old, open(new, "wb") as out:
        while left:
            n = old.readinto(mv[: min(left, len(buf))])
            out.write(mv[:n])
            out.flush()  # its first cluster into its folder entry (see store.Incoming.write)
            left -= n
    os.remove(box.index)
    os.rename(new, box.index)


def _reindex(box, done):
    # The index is gone: make a new one and fill it from the shard folders, in sequence order,
    # trying each sequence number a folder can hold (a stat each) rather than listing and
    # sorting its files, so memory stays the same however many there are. The folders tell the
    # layout: with 1,000 messages to a folder (the first layout) some message sits outside the
    # folder of 100 it would have now. (Up to seq 99 both layouts agree.)
    top = -1
    legacy = False
    for e in os.ilistdir(box.dir):
        if e[1] != 0x4000 or not e[0].isdigit():
            continue
        shard = int(e[0])
        top = max(top, shard)
        if not legacy:
            for f in os.ilistdir("{}/{}".format(box.dir, shard)):
                if f[0].isdigit() and int(f[0]) // PER_FOLDER != shard:
                    legacy = True
                    break
    box.create(legacy)
    count = 0
    for shard in range(top + 1):
        first = shard * box.per_folder
        if not path_exists(box.folder(first)):
            continue
        for seq in range(first, first + box.per_folder):
            try:
                size = os.stat(box.message_path(seq))[6]
            except OSError:
                continue
            box.append(seq, size)
            count += 1
    if count:
        done.append("re-indexed {} messages from the folders".format(count))
