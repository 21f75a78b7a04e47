"""Moving mailboxes off and onto a pocketpost card: `pocketpost mailbox export` and `import`.

The card's format is the one docs/storage.md describes (format version 3: version 2, index mark
`+`, with a mailbox's file of UIDLs kept from another server; version 1, mark `#`); this module reads and writes it with plain file operations, on a mounted
card folder or, without mounting, on a FAT image file through mtools (the Debian package).

- export: every user's mailbox becomes a Maildir that Dovecot 2.3 serves with the same POP3
  UIDLs: each message's UIDL goes into the `P` field of its record in `dovecot-uidlist` (Dovecot
  serves that field as the UIDL whatever `pop3_uidl_format` says; checked against Dovecot
  2.3.19 by tests/test_migrate.py). Message files get LF line ends (the Maildir convention,
  what Dovecot's own delivery writes) and `,S=<size>,W=<size with CRLF>` in their names:
  Dovecot's LIST then reports the card's sizes and its RETR sends the card's octets.
- import: a Maildir (Dovecot's, with its uidlist), an mbox file or a folder of .eml files
  becomes a user's mailbox on the card. The card derives a UIDL from the mailbox's generation
  and the message's sequence number (`GGGGGGGG.N`), so a UIDL of that form is kept by taking
  over the generation and numbers; any other UIDL RFC 1939 allows (Dovecot's default
  `000000016553f100`) is kept in the mailbox's `uidls` file. Only a UIDL no client can hold (not
  1-70 printable characters) or one that two messages share gets a new one, and only with
  `new_uidls` (clients download that message again).
  A running board is a source over POP3 (pop3:// or pop3s://) and a destination over SMTP
  (smtp://: every message gets a new UIDL and the board's trace fields).

Nothing on the source is ever written. Both directions can be interrupted and run again: what is
already in the destination is compared octet for octet and kept, so a re-run converges and never
makes duplicates; a destination that holds anything else is refused before anything is written.
"""

import dataclasses
import fcntl
import hashlib
import mmap
import os
import re
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from .errors import PocketpostError
from .provision import check_user_name

# ---- the card's format (docs/storage.md, firmware/pocketpost/mailbox.py)

RECORD = 20  # octets of the index header and of each record
PER_FOLDER = 100  # messages to a shard folder in format version 2 (mark "+")
LEGACY_PER_FOLDER = 1000  # in format version 1 (mark "#")
MAX_SEQ = 99999999  # sequence numbers have 8 digits (8.3 file names)
MARKS = {b"+": PER_FOLDER, b"#": LEGACY_PER_FOLDER}
# A UIDL the card can serve: the mailbox generation (8 lowercase hex digits), a dot, the
# message's sequence number (decimal, no leading zero).
CARD_UIDL = re.compile(r"([0-9a-f]{8})\.([1-9][0-9]{0,7})")
# RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
RFC1939_UIDL = re.compile(r"[\x21-\x7e]{1,70}")
# A record of a mailbox's `uidls` file (format version 3): "SSSSSSSS " + a UIDL of another form,
# padded with spaces to 70 octets, + LF; ascending by sequence number.
UIDL_RECORD = 80

# What `export` prints and docs/storage.md repeats: Dovecot settings for the exported Maildirs.
DOVECOT_CONFIG = """\
# Dovecot 2.3: one Maildir per user under {dest}, as `pocketpost mailbox export` wrote them.
mail_location = maildir:{dest}/%u
# The moved messages keep their UIDLs with no setting at all: Dovecot serves the P field of
# their dovecot-uidlist records, whatever pop3_uidl_format says. With this format, mail that
# arrives later gets UIDLs that continue the card's (generation.number), so a move back to a
# card keeps every UIDL (`pocketpost mailbox import`):
pop3_uidl_format = %08Xv.%u
# The files must belong to the user Dovecot reads mail as, e.g.: chown -R vmail:vmail {dest}
"""


class MigrateError(PocketpostError):
    """A move that cannot be done as asked (or a transfer that failed part-way: running it again
    finishes it)."""


class BadInput(MigrateError):
    """The source (or an option) cannot be used: unreadable, not what it claims to be."""

    exit_code = 2


class DestinationInUse(MigrateError):
    """The destination holds mail that did not come from this source."""


@dataclasses.dataclass
class Message:
    """One message to move: `load()` gives its wire form (CRLF line ends, no dot-stuffing, the
    octets RETR sends), `size` its length; `uidl` the UIDL clients know it by (None: none yet)."""

    origin: str  # where it comes from, for messages about it
    load: object
    size: int
    uidl: str = None
    seq: int = None  # on the card: its sequence number
    sender: str = None  # the envelope sender, where the source keeps it (an mbox "From " line)


@dataclasses.dataclass
class Mailbox:
    """A user's messages in order; `generation` and `next_seq` when they follow the card's UIDL
    rule (read from a card, or kept from UIDLs of the card's form)."""

    user: str
    messages: list
    generation: int = None
    next_seq: int = 1
    skipped: list = dataclasses.field(default_factory=list)  # (origin, reason): not moved
    renumbered: list = dataclasses.field(default_factory=list)  # (origin, reason): moved, new UIDL
    # {generation: next sequence number} the source knows were used up to (a uidlist's N)
    reserved: dict = dataclasses.field(default_factory=dict)
    uidls: dict = dataclasses.field(default_factory=lambda: {"kept": 0, "new": 0, "changed": 0})


def crlf(data):
    """The wire form of a message stored with LF line ends, as Dovecot's POP3 server sends it:
    every LF not preceded by CR becomes CRLF, and a message ends with a line end."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def card_uidl(generation, seq):
    return f"{generation:08x}.{seq}"


# ---- reading a card (a folder: the mounted card, or what mtools copied out of an image)


def read_card(root, users=None):
    """The mailboxes of the card whose root folder (holding `mail/`) is `root`, as Mailbox
    objects in user order; `users` limits them. Reads as the firmware's boot check would see the
    card, without repairing it: a committed deletion's messages are left out, a torn index tail
    is ignored, a message file found after the last record is included (the boot check indexes
    it)."""
    mail = Path(root) / "mail"
    if not mail.is_dir():
        raise BadInput(f"{root} is not a pocketpost card: it has no mail folder")
    names = sorted(p.name for p in mail.iterdir() if p.is_dir())
    if users:
        missing = sorted(set(users) - set(names))
        if missing:
            raise BadInput(f"no mailbox on the card for {', '.join(missing)}")
        names = [n for n in names if n in users]
    return [read_card_mailbox(mail / name, name) for name in names]


def parse_header(data, where):
    """(generation, next_seq, messages per folder) from an index header."""
    if len(data) < RECORD or data[0:1] not in MARKS or data[9] != 32 or data[19] != 10:
        raise BadInput(f"{where}: damaged index header (unknown card format version?)")
    try:
        return int(data[1:9], 16), int(data[10:19]), MARKS[data[0:1]]
    except ValueError:
        raise BadInput(f"{where}: damaged index header") from None


def parse_records(data):
    """[(seq, size)] of the index records after the header, up to the first damaged one."""
    out = []
    for off in range(RECORD, len(data) - len(data) % RECORD, RECORD):
        rec = data[off : off + RECORD]
        if rec[8] != 32 or rec[19] != 10 or not rec[:8].isdigit() or not rec[9:19].isdigit():
            break
        out.append((int(rec[:8]), int(rec[9:19])))
    return out


def message_path(box, seq, per_folder):
    return Path(box) / str(seq // per_folder) / str(seq)


def read_card_mailbox(box, user):
    """One mailbox folder as a Mailbox (see read_card)."""
    index = box / "index"
    if not index.exists() and (box / "index.new").exists():
        index = box / "index.new"  # a deletion's rewrite finished but was not renamed yet
    if not index.exists():
        raise BadInput(f"{user}: the mailbox has no index (start the board once: its boot check rebuilds it)")
    data = index.read_bytes()
    generation, next_seq, per_folder = parse_header(data, f"{user}/index")
    purged = set()
    journal = box / "purge"
    if journal.exists():
        purged = {int(line) for line in journal.read_bytes().split(b"\n") if line.strip().isdigit()}
    records = parse_records(data)
    kept = read_kept_uidls(box / "uidls")
    result = Mailbox(user, [], generation)
    for seq, size in records:
        next_seq = max(next_seq, seq + 1)
        if seq in purged:
            continue
        path = message_path(box, seq, per_folder)
        try:
            found = path.stat().st_size
        except OSError:
            result.skipped.append((f"{user} {card_uidl(generation, seq)}", "its file is missing"))
            continue
        if found != size:
            reason = f"its file has {found} octets, the index says {size}"
            result.skipped.append((f"{user} {card_uidl(generation, seq)}", reason))
            continue
        uidl = kept.get(seq) or card_uidl(generation, seq)
        result.messages.append(Message(str(path), _reader(path), size, uidl, seq))
    while True:  # messages delivered but not indexed (a crash): the boot check indexes them
        path = message_path(box, next_seq, per_folder)
        if not path.is_file():
            break
        uidl = kept.get(next_seq) or card_uidl(generation, next_seq)
        result.messages.append(Message(str(path), _reader(path), path.stat().st_size, uidl, next_seq))
        next_seq += 1
    result.next_seq = next_seq
    result.uidls["kept"] = len(result.messages)
    return result


def read_kept_uidls(path):
    """{seq: UIDL} of a mailbox's `uidls` file (none: {}), up to its first damaged record (as
    the firmware reads it: the messages after it have the card's UIDLs)."""
    kept = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return kept
    for off in range(0, len(data) - len(data) % UIDL_RECORD, UIDL_RECORD):
        rec = data[off : off + UIDL_RECORD]
        uidl = rec[9:79].rstrip(b" ")
        if rec[8] != 32 or rec[79] != 10 or not rec[:8].isdigit() or not RFC1939_UIDL.fullmatch(uidl.decode("latin-1")):
            break
        kept[int(rec[:8])] = uidl.decode()
    return kept


def uidls_bytes(mailbox):
    """The `uidls` file of a mailbox: a record for each message whose UIDL is not the card's
    own (b"" when there is none)."""
    out = []
    for m in sorted(mailbox.messages, key=lambda m: m.seq):
        if m.uidl and m.uidl != card_uidl(mailbox.generation, m.seq):
            out.append(f"{m.seq:08d} {m.uidl:<70}\n".encode())
    return b"".join(out)


def _reader(path):
    return lambda: Path(path).read_bytes()


# ---- FAT images, through mtools (never mounted, no root needed)

FAT_PARTITION_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}


def _fat_offset(image):
    """The offset of the FAT file system in `image`: 0 for a bare file system (a sim's sd.img),
    the first FAT partition's start for a copy of a whole card (MBR partition table)."""
    try:
        with open(image, "rb") as f:
            sector = f.read(512)
    except OSError as e:
        raise BadInput(f"cannot read {image}: {e.strerror}") from None
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise BadInput(f"{image} is not a FAT image (no boot sector)")
    if sector[0] in (0xEB, 0xE9) and int.from_bytes(sector[11:13], "little") in (512, 1024, 2048, 4096):
        return 0
    for entry in range(4):
        e = sector[446 + 16 * entry : 462 + 16 * entry]
        if e[4] in FAT_PARTITION_TYPES:
            return int.from_bytes(e[8:12], "little") * 512
    raise BadInput(f"{image} is not a FAT image (neither a FAT boot sector nor a FAT partition)")


class FatImage:
    """A FAT image file read and written with mtools (Debian package mtools): the host never
    mounts it. Refuses an image a running `pocketpost sim` holds (its folder's sim.lock)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInput(f"{path} is not a file")
        offset = _fat_offset(self.path)
        self.spec = f"{self.path}@@{offset}" if offset else str(self.path)
        self.env = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0", LC_ALL="C")
        self._lock_fd = None
        self._lock()
        self.run("minfo", "-i", self.spec, "::", what=f"{path} is not a FAT image")

    def _lock(self):
        lock = self.path.parent / "sim.lock"
        if not lock.exists():
            return
        self._lock_fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise MigrateError(f"a pocketpost sim is running on {self.path}: stop it first") from None

    def close(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run(self, tool, *args, what=None, ok=(0,)):
        if shutil.which(tool) is None:
            raise MigrateError(f"{tool} is not installed: it comes with mtools (apt-get install mtools)")
        proc = subprocess.run([tool, *args], capture_output=True, text=True, env=self.env)
        if proc.returncode not in ok:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            detail = detail[0] if detail else f"exit {proc.returncode}"
            raise (BadInput if what else MigrateError)(f"{what or 'mtools failed'}: {tool}: {detail}")
        return proc

    def space(self):
        """(free octets, cluster size) of the image's file system."""
        info = self.run("minfo", "-i", self.spec, "::").stdout
        sector = re.search(r"sector size: (\d+) bytes", info)
        cluster = re.search(r"cluster size: (\d+) sectors", info)
        free = re.search(r"([\d ]+) bytes free", self.run("mdir", "-i", self.spec, "::/").stdout)
        if not (sector and cluster and free):
            raise MigrateError(f"cannot tell the free space of {self.path} (mtools said something unexpected)")
        return int(free[1].replace(" ", "")), int(sector[1]) * int(cluster[1])

    def exists(self, path):
        return self.run("mdir", "-b", "-i", self.spec, f"::{path}", ok=(0, 1)).returncode == 0

    def extract(self, path, dest):
        """Copies folder `path` of the image (and all below it) into the host folder `dest`."""
        self.run("mcopy", "-s", "-n", "-m", "-i", self.spec, f"::{path}", str(dest))

    def mkdir(self, path):
        self.run("mmd", "-i", self.spec, f"::{path}")

    def put(self, files, folder):
        """Copies host files (or folders, with what they hold) into folder `folder` of the image,
        replacing files of the same name."""
        self.run("mcopy", "-s", "-D", "o", "-m", "-i", self.spec, *map(str, files), f"::{folder}/")


# ---- writing a card


def _existing_messages(box):
    """{seq: path} of the message files in a mailbox folder (any layout)."""
    found = {}
    if not box.is_dir():
        return found
    for shard in box.iterdir():
        if shard.is_dir() and shard.name.isdigit():
            for f in shard.iterdir():
                if f.name.isdigit() and f.is_file():
                    found[int(f.name)] = f
    return found


def new_generation(mailbox):
    """A random generation for a new mailbox, none of whose UIDLs (GGGGGGGG.N) a kept UIDL of
    its messages could ever be."""
    taken = {m.uidl.partition(".")[0] for m in mailbox.messages if m.uidl and CARD_UIDL.fullmatch(m.uidl)}
    while True:
        generation = int.from_bytes(secrets.token_bytes(4), "big")
        if f"{generation:08x}" not in taken:
            return generation


def plan_card_mailbox(box, mailbox):
    """Checks the mailbox folder `box` (which may hold the start of an earlier run of the same
    import) against `mailbox`; numbers the messages and chooses the generation. Returns the
    messages still to write. Raises DestinationInUse when `box` holds anything else."""
    user = mailbox.user
    index = box / "index"
    existing_gen = existing_next = None
    records = []
    if box.exists():
        for name in ("purge", "purge.new", "index.new"):
            if (box / name).exists():
                raise DestinationInUse(
                    f"{user}: the mailbox has an unfinished deletion ({name}): start the board once first"
                )
        if index.exists():
            data = index.read_bytes()
            try:
                existing_gen, existing_next, per_folder = parse_header(data, f"{user}/index")
            except BadInput as e:
                raise DestinationInUse(str(e)) from None
            records = parse_records(data)
            if per_folder != PER_FOLDER and (records or _existing_messages(box)):
                raise DestinationInUse(f"{user}: the destination already holds a mailbox (format version 1)")
    files = _existing_messages(box)
    held = sorted(set(files) | {seq for seq, _ in records})
    if held and mailbox.generation is not None and existing_gen not in (None, mailbox.generation):
        raise DestinationInUse(f"{user}: the destination already holds {len(held)} other messages")
    if mailbox.generation is None:
        # New UIDLs: those of an earlier run of this import if it got as far as writing
        # messages, else a new generation (an empty mailbox's own may have been used up to
        # any number).
        if held and existing_gen is not None:
            mailbox.generation = existing_gen
        else:
            mailbox.generation = new_generation(mailbox)
    by_seq = {m.seq: m for m in mailbox.messages}
    sizes = dict(records)
    for seq in held:
        m = by_seq.get(seq)
        path = message_path(box, seq, PER_FOLDER)
        same = m is not None and path.is_file() and sizes.get(seq, m.size) == m.size and path.read_bytes() == m.load()
        if not same:
            raise DestinationInUse(
                f"{user}: the destination already holds {len(held)} messages that are not all from the source"
            )
    if existing_gen == mailbox.generation and existing_next:
        mailbox.next_seq = max(mailbox.next_seq, existing_next)
    present = set(files)
    return [m for m in mailbox.messages if m.seq not in present]


def number_messages(mailbox, new_uidls):
    """Gives each message its sequence number on the card: the one in a UIDL of the card's form
    (one generation per mailbox, ascending) is kept; other messages take the next number that
    was never used (above the last kept one and the source's next number, `mailbox.reserved`),
    and keep a UIDL of another form in the `uidls` file. A message whose UIDL no client can hold
    (not RFC 1939's 1-70 printable characters) or that an earlier message has too is refused
    unless `new_uidls`, which gives it the card's UIDL for its new number."""
    gen = mailbox.generation
    if gen is None:
        for m in mailbox.messages:
            match = CARD_UIDL.fullmatch(m.uidl) if m.uidl else None
            if match:
                gen = int(match[1], 16)
                break
    floor = mailbox.reserved.get(gen, 1) if gen is not None else 1
    last = 0
    refused = []
    seen = set()
    for m in mailbox.messages:
        match = CARD_UIDL.fullmatch(m.uidl) if m.uidl else None
        if match and int(match[1], 16) == gen and int(match[2]) > last:
            m.seq = last = int(match[2])
            mailbox.uidls["kept"] += 1
            seen.add(m.uidl)
            continue
        m.seq = last = max(last + 1, floor)
        if m.uidl is None:
            mailbox.uidls["new"] += 1
            continue
        if not RFC1939_UIDL.fullmatch(m.uidl):
            why = "not a valid POP3 UIDL (RFC 1939: 1-70 printable characters), so no client can hold it"
        elif m.uidl in seen:
            why = "the UIDL of an earlier message too (RFC 1939: unique in a maildrop)"
        else:
            mailbox.uidls["kept"] += 1  # kept in the uidls file, for its new number
            seen.add(m.uidl)
            continue
        refused.append((m.origin, m.uidl, why))
        m.uidl = None  # the card's own for its number
        mailbox.uidls["changed"] += 1
    if last > MAX_SEQ:
        raise BadInput(f"{mailbox.user}: message numbers beyond {MAX_SEQ}")
    mailbox.generation = gen
    mailbox.next_seq = max(floor, last + 1)
    if refused and not new_uidls:
        origin, uidl, why = refused[0]
        raise BadInput(
            f"{mailbox.user}: {_count(len(refused), 'message')} would get new UIDLs (e.g. {origin}: UIDL {uidl!r} is {why}); "
            "--new-uidls imports them anyway, and POP3 clients that leave mail on the server fetch them again"
        )
    for origin, uidl, why in refused:
        mailbox.renumbered.append((origin, f"UIDL {uidl!r} changed: it is {why}"))
    return refused


def _count(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def index_bytes(mailbox):
    out = [f"+{mailbox.generation:08x} {mailbox.next_seq:09d}\n".encode()]
    out += [f"{m.seq:08d} {m.size:010d}\n".encode() for m in mailbox.messages]
    return b"".join(out)


def _needs_header(index, mailbox):
    """Whether a header of the mailbox's generation must be written before its messages: there
    is no index yet, or an empty one of another generation. (A boot between the messages and the
    index then indexes them with the right UIDs.)"""
    if not index.exists():
        return True
    data = index.read_bytes()
    return len(data) < 2 * RECORD and data[1:9] != f"{mailbox.generation:08x}".encode()


def _write_new(path, data, tmp):
    """Writes a file that becomes visible complete: written in `tmp`, synced, renamed."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CardFolder:
    """A card mounted on this computer (its root folder, holding mail/ and tmp/)."""

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInput(f"{root} is not a folder")

    def close(self):
        pass

    def mailbox_dir(self, user):
        return self.root / "mail" / user

    def space(self):
        """(free octets, allocation unit) of the file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_bsize

    def write(self, mailbox, todo, progress):
        """Writes the messages `todo` of a planned mailbox, then its index (firmware's order: a
        message file before its record; the index replaced as a deletion replaces it)."""
        box = self.mailbox_dir(mailbox.user)
        tmp = self.root / "tmp"
        for folder in (self.root / "mail", tmp, box):
            folder.mkdir(exist_ok=True)
        index = box / "index"
        if _needs_header(index, mailbox):
            first = todo[0].seq if todo else mailbox.next_seq
            _write_new(index, f"+{mailbox.generation:08x} {first:09d}\n".encode(), tmp / "index.tmp")
        for m in todo:
            path = message_path(box, m.seq, PER_FOLDER)
            path.parent.mkdir(exist_ok=True)
            _write_new(path, m.load(), tmp / "import.tmp")
            progress(m.size)
        kept = uidls_bytes(mailbox)
        if kept or (box / "uidls").exists():  # an old one's records must not outlive it
            _write_new(box / "uidls", kept, tmp / "uidls.tmp")
        new = box / "index.new"
        _write_new(new, index_bytes(mailbox), tmp / "index.tmp")
        index.unlink()
        new.rename(index)


class CardImage:
    """A card reached file by file: an image (FAT) through mtools (a FatImage), or a running
    board's card over its console (card_console.ConsoleCard). Each mailbox is prepared in a
    host folder and copied in, message files first and the index last."""

    def __init__(self, image):
        self.image = image
        self.stage = Path(tempfile.mkdtemp(prefix="pocketpost-card-"))

    def close(self):
        self.image.close()
        shutil.rmtree(self.stage, ignore_errors=True)

    def space(self):
        return self.image.space()

    def mailbox_dir(self, user):
        """The user's mailbox as it is on the image, copied out to the host (for checking)."""
        box = self.stage / "mail" / user
        if not box.exists():
            (self.stage / "mail").mkdir(exist_ok=True)
            if self.image.exists(f"/mail/{user}"):
                self.image.extract(f"/mail/{user}", self.stage / "mail")
        return box

    def write(self, mailbox, todo, progress):
        image = self.image
        user = mailbox.user
        for folder in ("/mail", "/tmp"):
            if not image.exists(folder):
                image.mkdir(folder)
        box = self.stage / "mail" / user
        box.mkdir(parents=True, exist_ok=True)
        if _needs_header(box / "index", mailbox):
            if not image.exists(f"/mail/{user}"):
                image.mkdir(f"/mail/{user}")
            first = todo[0].seq if todo else mailbox.next_seq
            (box / "index").write_bytes(f"+{mailbox.generation:08x} {first:09d}\n".encode())
            image.put([box / "index"], f"/mail/{user}")
        shards = {}
        for m in todo:
            shards.setdefault(m.seq // PER_FOLDER, []).append(m)
        for shard, messages in sorted(shards.items()):
            folder = box / str(shard)
            if not image.exists(f"/mail/{user}/{shard}"):
                image.mkdir(f"/mail/{user}/{shard}")
            folder.mkdir(exist_ok=True)
            paths = []
            for m in messages:
                path = folder / str(m.seq)
                path.write_bytes(m.load())
                paths.append(path)
            # mtools takes many files a call; a few at a time keeps the progress bar moving.
            for i in range(0, len(paths), 25):
                image.put(paths[i : i + 25], f"/mail/{user}/{shard}")
                for path in paths[i : i + 25]:
                    path.unlink()  # on the image now: the host keeps no second copy
                progress(sum(m.size for m in messages[i : i + 25]))
        kept = uidls_bytes(mailbox)
        if kept or (box / "uidls").exists():  # an old one's records must not outlive it
            (box / "uidls").write_bytes(kept)
            image.put([box / "uidls"], f"/mail/{user}")
        (box / "index").write_bytes(index_bytes(mailbox))
        image.put([box / "index"], f"/mail/{user}")


class BoardOverSmtp:
    """A running board as an import destination: messages are delivered to it over SMTP, so the
    board puts its Return-Path and Received fields in front of each and gives it a new UIDL (no
    UIDL survives this way). What the mailbox holds already is read over POP3 with the user's
    password: it must be the start of the source (an earlier, interrupted run), and only the
    rest is sent."""

    def __init__(self, host, smtp_port, pop3_port, domain, password):
        self.host, self.smtp_port, self.pop3_port = host, smtp_port, pop3_port
        self.domain = domain
        self.password = password

    def close(self):
        pass

    def plan(self, mailbox):
        if self.password is None:
            raise BadInput("an import over SMTP needs the user's password (--password), to see what the mailbox holds")
        pop = Pop3Reader(self.host, self.pop3_port, mailbox.user, self.password)
        try:
            numbers = [int(line.split()[0]) for line in pop.multiline("LIST").splitlines()]
            held = [strip_trace(pop.multiline(f"RETR {n}")) for n in numbers]
        finally:
            pop.close()
        if len(held) > len(mailbox.messages) or any(h != m.load() for h, m in zip(held, mailbox.messages)):
            raise DestinationInUse(
                f"{mailbox.user}: the mailbox already holds {len(held)} messages that are not all from the source"
            )
        mailbox.uidls["changed"] = 0
        mailbox.uidls["new"] = len(mailbox.messages)
        mailbox.uidls["kept"] = 0
        mailbox.generation = None
        return mailbox.messages[len(held) :]

    def write(self, mailbox, todo, progress):
        rcpt = f"{mailbox.user}@{self.domain}"
        try:
            with smtplib.SMTP(self.host, self.smtp_port, local_hostname="pocketpost-import", timeout=60) as smtp:
                for m in todo:
                    data = m.load()
                    sender = m.sender
                    if sender is None:
                        found = re.match(rb"Return-Path: *<([^<>\r\n]*)>", data)
                        sender = found[1].decode("ascii", "replace") if found else ""
                    refused = smtp.sendmail(sender, [rcpt], data)
                    if refused:
                        raise MigrateError(f"{rcpt} refused: {refused[rcpt]}")
                    progress(m.size)
        except smtplib.SMTPException as e:
            raise MigrateError(f"SMTP delivery to {rcpt} failed: {e}") from None
        except OSError as e:
            raise MigrateError(f"cannot deliver over SMTP to {self.host}:{self.smtp_port}: {e.strerror or e}") from None


def strip_trace(message):
    """A message as stored by a board, without the Return-Path and Received fields the board put
    in front when it took it over SMTP."""
    lines = message.split(b"\r\n")
    i = 1 if lines and lines[0].startswith(b"Return-Path:") else 0
    if i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
    return b"\r\n".join(lines[i:])


def parse_smtp_dest(dest):
    """(host, port) of "smtp://HOST[:PORT]", or None for another destination."""
    match = re.fullmatch(r"smtp://([^:/]+)(?::([0-9]{1,5}))?/?", dest)
    if not match:
        return None
    return match[1], int(match[2] or 25)


# Free space left on a card after an import, as the firmware keeps it free for deletions (its
# journal, a new index) and folders: store.py's _SPACE_MARGIN.
SPACE_MARGIN = 65536


def check_space(card, todo):
    """Raises MigrateError when the messages `todo` (and their folders and index) do not fit on
    the card with the firmware's margin left free."""
    if not todo:
        return
    free, unit = card.space()
    clusters = lambda n: -(-n // unit) * unit
    need = sum(clusters(m.size) for m in todo) + clusters(RECORD * (len(todo) + 1))
    need += clusters(1) * (len({m.seq // PER_FOLDER for m in todo}) + 1) + SPACE_MARGIN
    if need > free:
        raise MigrateError(f"the card has {free:,} octets free; the import needs {need:,} (with the firmware's margin)")


def open_card(dest):
    """A card destination: a folder (mounted card) or an image file."""
    path = Path(dest)
    if path.is_dir():
        return CardFolder(path)
    if path.is_file():
        return CardImage(FatImage(path))
    raise BadInput(f"{dest}: no such card folder or image")


def parse_console_dest(dest):
    """The console port of "console:PORT" ("" for "console": the one board plugged in), or None
    for another destination."""
    if dest == "console":
        return ""
    return dest[len("console:"):] if dest.startswith("console:") and len(dest) > len("console:") else None


# ---- Maildir (Dovecot)


def _guid(*parts):
    return hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()


def maildir_name(mailbox, m, lf):
    """The file name (in cur/, without the ":2," info) of an exported message."""
    return f"{mailbox.generation:08x}.{m.seq}.pocketpost,S={len(lf)},W={m.size}"


def read_uidlist(path):
    """(uidvalidity, next uid, [(uid, {ext key: value}, base name)]) of a dovecot-uidlist file
    (version 3, what Dovecot 2.x writes)."""
    lines = path.read_bytes().decode("utf-8", "replace").split("\n")
    head = lines[0].split()
    if not head or head[0] != "3":
        raise BadInput(f"{path}: unsupported dovecot-uidlist version (only version 3 is read)")
    fields = {word[0]: word[1:] for word in head[1:] if word}
    try:
        validity, next_uid = int(fields.get("V", "0")), int(fields.get("N", "1"))
    except ValueError:
        raise BadInput(f"{path}: damaged header") from None
    records = []
    for n, line in enumerate(lines[1:], 2):
        if not line:
            continue
        left, colon, base = line.partition(" :")
        words = left.split()
        if not colon or not words or not words[0].isdigit():
            raise BadInput(f"{path} line {n}: damaged record")
        records.append((int(words[0]), {w[0]: w[1:] for w in words[1:]}, base))
    return validity, next_uid, records


def maildir_form(data):
    """A message's octets as a Maildir file holds them: LF line ends, unless the message has a CR
    that LF line ends would lose (then CRLF as it is: Dovecot reads both)."""
    lf = data.replace(b"\r\n", b"\n")
    return lf if crlf(lf) == data else data


def _maildir_present(md):
    """{base name: path} of the message files in a Maildir's cur/ and new/."""
    present = {}
    for sub in ("cur", "new"):
        if (md / sub).is_dir():
            for f in (md / sub).iterdir():
                present[f.name.split(":")[0]] = f
    return present


def check_maildir_dest(dest, mailbox):
    """Raises DestinationInUse when the Maildir dest/<user> holds a message or a uidlist that an
    export of `mailbox` would not have written (names are checked here, contents while
    writing)."""
    md = Path(dest) / mailbox.user
    if not md.exists():
        return
    ours = {f"{mailbox.generation:08x}.{m.seq}.pocketpost" for m in mailbox.messages}
    for base, f in _maildir_present(md).items():
        if base.split(",")[0] not in ours:
            raise DestinationInUse(f"{md} already holds mail that is not from the source ({f.name})")
    uidlist = md / "dovecot-uidlist"
    if uidlist.exists() and read_uidlist(uidlist)[0] != (mailbox.generation or 1):
        raise DestinationInUse(f"{md} already holds a mailbox with another UIDVALIDITY")


def drop_deleted_since(dest, mailbox):
    """Leaves out of `mailbox` (as skipped) the messages an earlier export to dest/<user> wrote
    and that were deleted there since (by Dovecot's POP3): that export ran to its end (its
    uidlist, written last, is there), so a message of it that is gone was deleted, and an
    export run again must not bring it back."""
    md = Path(dest) / mailbox.user
    if not (md / "dovecot-uidlist").exists():
        return
    present = {base.split(",")[0] for base in _maildir_present(md)}
    kept = []
    for m in mailbox.messages:
        if f"{mailbox.generation:08x}.{m.seq}.pocketpost" in present:
            kept.append(m)
        else:
            mailbox.skipped.append((m.origin, "deleted from the destination since an earlier export"))
    mailbox.messages = kept


def write_maildir(dest, mailbox, progress):
    """Writes (or completes) the Maildir dest/<user> of a mailbox read from a card, one message
    at a time, then its dovecot-uidlist. Returns the number of message files written."""
    md = Path(dest) / mailbox.user
    check_maildir_dest(dest, mailbox)
    present = _maildir_present(md)
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    validity = mailbox.generation or 1  # Dovecot refuses a UIDVALIDITY of 0
    uidlist = [f"3 V{validity} N{mailbox.next_seq} G{_guid('pocketpost', mailbox.user, mailbox.generation)}\n"]
    written = 0
    for m in mailbox.messages:
        data = maildir_form(m.load())
        name = maildir_name(mailbox, m, data)
        if name in present:
            if present[name].read_bytes() != data:
                raise DestinationInUse(f"{md}: {present[name].name} differs from the source's message")
        else:
            _write_new(md / "cur" / f"{name}:2,", data, md / "tmp" / name)
            written += 1
        uidlist.append(f"{m.seq} P{m.uidl} :{name}\n")
        progress(m.size)
    _write_new(md / "dovecot-uidlist", "".join(uidlist).encode(), md / "tmp" / "dovecot-uidlist")
    return written


DOVECOT_DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"


def dovecot_uidl(fmt, uid, validity, base):
    """The UIDL Dovecot makes with `pop3_uidl_format` (%u UID, %v UIDVALIDITY, %f file name; a
    width and X, hex, as in %08Xu) for a message its uidlist gives no P field."""

    def one(m):
        width, hexa, key = m.groups()[:3]
        if key == "%":
            return "%"
        if key == "f":
            return base
        value = uid if key == "u" else validity
        text = format(value, "x") if hexa else str(value)
        return text.rjust(int(width), "0") if width else text

    if not re.fullmatch(r"(?:[^%]|%(?:0?[0-9]*X?[uvf]|%))*", fmt):
        raise BadInput(f"pop3_uidl_format {fmt!r}: only %u, %v and %f (with a width and X) can be computed")
    return re.sub(r"%(?:0?([0-9]*)(X?)([uvf])|(%))", lambda m: "%" if m[4] else one(m), fmt)


def read_maildir(path, user, uidl_format=DOVECOT_DEFAULT_UIDL_FORMAT):
    """A Maildir as a Mailbox: the messages in Dovecot's UID order (those its uidlist does not
    know yet after them, by file name), each with the UIDL Dovecot serves: the uidlist's P field;
    a message listed without one has the UIDL `uidl_format` (Dovecot's pop3_uidl_format) makes
    of its UID and the UIDVALIDITY."""
    path = Path(path)
    files = {}
    for sub in ("cur", "new"):
        if (path / sub).is_dir():
            for f in sorted((path / sub).iterdir()):
                if f.is_file():
                    files[f.name.split(":")[0]] = f
    mailbox = Mailbox(user, [])
    validity = next_uid = None
    listed = []
    if (path / "dovecot-uidlist").exists():
        validity, next_uid, listed = read_uidlist(path / "dovecot-uidlist")
    seen = set()
    for uid, ext, base in sorted(listed):
        f = files.get(base)
        if f is None or base in seen:
            continue  # expunged since the uidlist was written
        seen.add(base)
        uidl = ext.get("P") or dovecot_uidl(uidl_format, uid, validity, base)
        mailbox.messages.append(_file_message(f, uidl))
    for base, f in files.items():
        if base not in seen:
            mailbox.messages.append(_file_message(f, None))
    if validity and next_uid:
        # An export's uidlist has V = the generation and N = the card's next sequence number
        # (Dovecot raises N as mail arrives).
        mailbox.reserved[validity] = next_uid
    return mailbox


def _file_message(path, uidl):
    data = crlf(path.read_bytes())
    return Message(str(path), lambda p=path: crlf(p.read_bytes()), len(data), uidl)


# ---- mbox and .eml


def read_mbox(path, user, quoting="mboxrd"):
    """An mbox file as a Mailbox. A message starts at a "From " line at the start of the file or
    after an empty line (that empty line ends the message before it and is not part of it).
    `quoting` undoes the writer's quoting of body lines: mboxrd (">From ", ">>From "... lose one
    ">") or mboxo (">From " becomes "From "; mboxo cannot tell it from a line that was
    ">From " already). The file is mapped, not read into memory; messages are read when
    written."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise BadInput(f"{path} is not an mbox file: it is empty")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if data[:5] != b"From ":
        raise BadInput(f"{path} is not an mbox file: it does not start with a 'From ' line")
    # (start of the "From " line, end of the message before it: the separating empty line left out)
    bounds = [(m.end(), m.start() + 1) for m in re.finditer(rb"\n\r?\n(?=From )", data)]
    starts = [0] + [start for start, _ in bounds]
    ends = [end for _, end in bounds] + [len(data)]
    mailbox = Mailbox(user, [])
    pattern = re.compile(rb"^>(>*From )" if quoting == "mboxrd" else rb"^>(From )", re.M)

    def wire(start, end):
        chunk = data[start:end]
        return crlf(pattern.sub(rb"\1", chunk[chunk.find(b"\n") + 1 :]))

    for n, (start, end) in enumerate(zip(starts, ends)):
        nl = data.find(b"\n", start, end)
        if nl < 0 or not re.fullmatch(rb"From [^ \r\n]+ .*", data[start:nl].rstrip(b"\r")):
            raise BadInput(f"{path}: damaged 'From ' line of message {n + 1}")
        if not data[nl + 1 : end].strip():
            raise BadInput(f"{path}: message {n + 1} is empty (a damaged mbox?)")
        size = len(wire(start, end))
        sender = data[start + 5 : nl].split(b" ", 1)[0].decode("ascii", "replace")
        mailbox.messages.append(Message(f"{path} message {n + 1}", lambda s=start, e=end: wire(s, e), size,
                                        sender="" if sender == "MAILER-DAEMON" else sender))
    return mailbox


def read_eml_folder(path, user):
    """A folder of .eml files (one message each, in file name order) as a Mailbox."""
    mailbox = Mailbox(user, [])
    for f in sorted(Path(path).iterdir()):
        if not f.is_file():
            continue
        if f.suffix.lower() != ".eml":
            mailbox.skipped.append((str(f), "not an .eml file"))
            continue
        size = len(crlf(f.read_bytes()))
        if not size:
            mailbox.skipped.append((str(f), "empty"))
            continue
        mailbox.messages.append(Message(str(f), lambda p=f: crlf(p.read_bytes()), size))
    return mailbox


# ---- POP3 (a running board)


class Pop3Reader:
    """A minimal POP3 client that keeps exact octets (poplib refuses lines over 2,048 octets)."""

    def __init__(self, host, port, user, password, timeout=30, tls=None):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            if tls is not None:
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        except ssl.SSLError as e:
            raise MigrateError(
                f"TLS with {host}:{port} failed: {e.reason or e} (--cafile for a self-signed certificate)"
            ) from None
        except OSError as e:
            raise MigrateError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        self.file = self.sock.makefile("rb")
        self._status()
        self.command(f"USER {user}")
        self.command(f"PASS {password}", what=f"login as {user} refused")

    def _status(self, what="POP3 error"):
        line = self.file.readline()
        if not line.startswith(b"+OK"):
            raise MigrateError(f"{what}: {line.decode('utf-8', 'replace').strip() or 'connection closed'}")
        return line

    def command(self, text, what="POP3 error"):
        self.sock.sendall(text.encode() + b"\r\n")
        return self._status(what)

    def multiline(self, text):
        self.command(text)
        out = bytearray()
        while True:
            line = self.file.readline()
            if not line.endswith(b"\n"):
                raise MigrateError("POP3 connection closed in a multi-line reply")
            if line == b".\r\n":
                return bytes(out)
            out += line[1:] if line.startswith(b".") else line

    def close(self):
        try:
            self.command("QUIT")
        except (MigrateError, OSError):
            pass
        self.file.close()
        self.sock.close()


def read_pop3(host, port, user, password, tls=None):
    """A user's mailbox read from a running board over POP3 (`tls`: an ssl context for POP3S;
    nothing is deleted). The card's header (its next sequence number) is not visible over POP3:
    the export takes the highest UIDL's number + 1."""
    pop = Pop3Reader(host, port, user, password, tls=tls)
    try:
        uidls = [line.split() for line in pop.multiline("UIDL").splitlines()]
        sizes = dict(line.split() for line in pop.multiline("LIST").decode().splitlines())
        messages = {}
        for n, uidl in uidls:
            messages[int(n)] = pop.multiline(f"RETR {int(n)}")
    finally:
        pop.close()
    mailbox = Mailbox(user, [])
    for n, uidl in uidls:
        uidl = uidl.decode()
        data = messages[int(n)]
        if int(sizes[n.decode()]) != len(data):
            raise MigrateError(f"{user}: message {int(n)}: LIST said {sizes[n.decode()]} octets, RETR sent {len(data)}")
        mailbox.messages.append(Message(f"{user} {uidl}", lambda d=data: d, len(data), uidl))
    # The card's own UIDLs give the generation and numbers; a UIDL the card keeps from another
    # server (an import's) does not show its number: it takes the next free one, which is the
    # one the import gave it, since an import numbers such messages in order after the others.
    generations = {CARD_UIDL.fullmatch(m.uidl)[1] for m in mailbox.messages if CARD_UIDL.fullmatch(m.uidl)}
    if len(generations) > 1:
        raise BadInput(f"{user}: UIDLs of {len(generations)} mailbox generations: is this a pocketpost board?")
    number_messages(mailbox, new_uidls=False)
    if mailbox.generation is None:
        mailbox.generation = new_generation(mailbox)
    return mailbox


# ---- the two commands


def _summary(mailboxes, dry_run, **extra):
    """What --json prints: per user the messages and octets moved (or found already there),
    the generation and next sequence number, UIDLs kept / new (the source had none) / changed,
    files written by this run, messages skipped and messages given a new UIDL, with reasons;
    the totals; the lists again with the user named."""
    users = []
    for mb in mailboxes:
        users.append({
            "user": mb.user,
            "messages": len(mb.messages),
            "octets": sum(m.size for m in mb.messages),
            "generation": f"{mb.generation:08x}" if mb.generation is not None else None,
            "next_seq": mb.next_seq,
            "uidls": dict(mb.uidls),
            "written": getattr(mb, "written", 0),
            "skipped": [{"message": o, "reason": r} for o, r in mb.skipped],
            "uidl_changed": [{"message": o, "reason": r} for o, r in mb.renumbered],
        })
    return {
        "dry_run": dry_run,
        "users": users,
        "messages": sum(u["messages"] for u in users),
        "octets": sum(u["octets"] for u in users),
        "skipped": [dict(s, user=u["user"]) for u in users for s in u["skipped"]],
        "uidl_changed": [dict(s, user=u["user"]) for u in users for s in u["uidl_changed"]],
        **extra,
    }


def parse_pop3_source(source):
    """(host, port, tls) of "pop3://HOST[:PORT]" or "pop3s://HOST[:PORT]" (implicit TLS), or
    None for another source."""
    match = re.fullmatch(r"pop3(s?)://([^:/]+)(?::([0-9]{1,5}))?/?", source)
    if not match:
        return None
    return match[2], int(match[3] or (995 if match[1] else 110)), bool(match[1])


def export_mailboxes(source, dest, fmt="maildir", users=None, passwords=None, dry_run=False,
                     progress=None, on_total=None, cafile=None):
    """Exports the mailboxes of SOURCE — a card folder, a card image file or "pop3://HOST:PORT"
    or "pop3s://HOST:PORT" (with `passwords` {user: password}; `cafile` the certificate to trust
    besides the system's) — into Maildirs under `dest`, one a user (dest/<user>).
    `progress(octets)` is called as messages are written, `on_total(octets)` once before.
    Returns the summary (see _summary), with the Dovecot settings it needs."""
    if fmt != "maildir":
        raise BadInput(f"unknown export format {fmt!r} (maildir)")
    progress = progress or (lambda n: None)
    cleanup = tempfile.mkdtemp(prefix="pocketpost-export-")
    try:
        mailboxes = _read_export_source(source, users, passwords or {}, cafile, cleanup)
        dest = Path(dest)
        if dest.exists() and not dest.is_dir():
            raise BadInput(f"{dest} is not a folder")
        for mb in mailboxes:  # every destination is checked before anything is written
            check_maildir_dest(dest, mb)
            drop_deleted_since(dest, mb)
        if on_total:
            on_total(sum(m.size for mb in mailboxes for m in mb.messages))
        for mb in mailboxes:
            mb.written = 0 if dry_run else write_maildir(dest, mb, progress)
        return _summary(mailboxes, dry_run, format=fmt, dovecot_config=DOVECOT_CONFIG.format(dest=dest.resolve()))
    finally:
        shutil.rmtree(cleanup, ignore_errors=True)


def _read_export_source(source, users, passwords, cafile, scratch):
    """The mailboxes of an export's SOURCE (see export_mailboxes); an image's mail folder is
    copied out into the folder `scratch` first."""
    pop3 = parse_pop3_source(str(source))
    if pop3:
        missing = sorted(set(users or ()) - set(passwords))
        if not passwords or missing:
            raise BadInput(f"a POP3 source needs each user's password (--user NAME:PASSWORD){': ' if missing else ''}"
                           f"{', '.join(missing)}")
        host, port, tls = pop3
        context = None
        if tls:
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as e:
                raise BadInput(f"cannot load {cafile}: {e}") from None
        return [read_pop3(host, port, user, password, context) for user, password in sorted(passwords.items())]
    if Path(source).is_dir():
        return read_card(source, users)
    if Path(source).is_file():
        image = FatImage(source)
        try:
            if not image.exists("/mail"):
                raise BadInput(f"{source} is not a pocketpost card: it has no mail folder")
            image.extract("/mail", scratch)
        finally:
            image.close()
        return read_card(scratch, users)
    raise BadInput(f"{source}: no such card folder, image or pop3:// address")


def _is_maildir(path):
    return (path / "cur").is_dir() or (path / "new").is_dir()


def detect_import_source(source, fmt="auto"):
    """(format, [(user or None, path)]) of an import source: an mbox file, a folder of .eml
    files, one Maildir (cur/ and new/), or a folder of Maildirs named after their users."""
    path = Path(source)
    if not path.exists():
        raise BadInput(f"{source}: no such file or folder")
    if fmt in ("maildir", "eml") and not path.is_dir():
        raise BadInput(f"{source} is not a folder")
    if fmt == "mbox" and not path.is_file():
        raise BadInput(f"{source} is not a file (an mbox is one)")
    if fmt in ("auto", "maildir") and path.is_dir() and not _is_maildir(path):
        found = sorted(p for p in path.iterdir() if p.is_dir() and _is_maildir(p))
        if found:
            return "maildir", [(p.name, p) for p in found]
        if fmt == "maildir":
            raise BadInput(f"{source} is neither a Maildir (cur/, new/) nor a folder of Maildirs")
    if fmt == "auto":
        if path.is_file():
            fmt = "mbox"
        elif _is_maildir(path):
            fmt = "maildir"
        elif any(p.suffix.lower() == ".eml" for p in path.iterdir()):
            fmt = "eml"
        else:
            raise BadInput(
                f"{source} is neither an mbox file, a Maildir, a folder of Maildirs nor a folder of .eml files"
            )
    return fmt, [(None, path)]


def import_mailboxes(source, dest, user=None, fmt="auto", quoting="mboxrd", new_uidls=False, dry_run=False,
                     progress=None, on_total=None, uidl_format=DOVECOT_DEFAULT_UIDL_FORMAT,
                     password=None, domain="pocketpost.local", pop3_port=110):
    """Imports SOURCE (see detect_import_source) into `dest`: a mounted card folder, a card
    image file, "console:PORT" (a running board's card over its console: UIDLs kept, the
    firmware stopped meanwhile), or "smtp://HOST[:PORT]" of a running board (new UIDLs;
    `password` for reading the mailbox over POP3 at `pop3_port`, `domain` the board's mail
    domain). `user` names the
    mailbox of a single source (a Maildir, an mbox, a folder of .eml) or picks one of a folder
    of Maildirs. Every mailbox is read and every destination checked before anything is
    written. Returns the summary."""
    progress = progress or (lambda n: None)
    fmt, sources = detect_import_source(source, fmt)
    if sources[0][0] is None:
        if not user:
            raise BadInput(f"--user is needed: {source} holds one mailbox")
        sources = [(user, sources[0][1])]
    elif user:
        sources = [s for s in sources if s[0] == user]
        if not sources:
            raise BadInput(f"{source} has no Maildir for {user}")
    smtp = parse_smtp_dest(str(dest))
    if smtp and len(sources) != 1:
        raise BadInput("an import over SMTP takes one user at a time (--user)")
    mailboxes = []
    for name, path in sources:
        try:
            check_user_name(name)
        except ValueError as e:
            raise BadInput(str(e)) from None
        try:
            if fmt == "maildir":
                mb = read_maildir(path, name, uidl_format)
            elif fmt == "mbox":
                mb = read_mbox(path, name, quoting)
            else:
                mb = read_eml_folder(path, name)
        except OSError as e:
            raise BadInput(f"cannot read {path}: {e.strerror}") from None
        if smtp:
            for m in mb.messages:
                if m.uidl is not None and not new_uidls:
                    raise BadInput(f"{name}: over SMTP every message gets a new UIDL, and {m.origin} has one "
                                   "(--new-uidls imports anyway; clients fetch the messages again)")
        number_messages(mb, new_uidls)
        mailboxes.append(mb)
    console = parse_console_dest(str(dest))
    if smtp:
        card = BoardOverSmtp(smtp[0], smtp[1], pop3_port, domain, password)
    elif console is not None:
        from .card_console import ConsoleCard

        card = CardImage(ConsoleCard(console or None))
    else:
        card = open_card(dest)
    try:
        if smtp:
            plans = [(mb, card.plan(mb)) for mb in mailboxes]
        else:
            plans = [(mb, plan_card_mailbox(card.mailbox_dir(mb.user), mb)) for mb in mailboxes]
            check_space(card, [m for _, todo in plans for m in todo])
        if on_total:
            on_total(sum(m.size for _, todo in plans for m in todo))
        for mb, todo in plans:
            mb.written = 0 if dry_run else len(todo)
            if not dry_run:
                card.write(mb, todo, progress)
    finally:
        card.close()
    return _summary(mailboxes, dry_run, format=fmt)
