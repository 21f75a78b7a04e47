"""Power cuts (SIGKILL) while clients deliver and delete: what the server acknowledged survives,
nothing half-done is visible, and the card is left in a state fsck.fat accepts. And a full card,
during DATA, at boot, and when only deleting mail can make room (the card filling during DATA
and during a multi-recipient delivery is in test_storage.py).

The kills come two ways (tests/crash_harness.py):
- at a chosen SD block write: a probe build of the firmware stops dead before its Nth block write
  from a given moment, and the test SIGKILLs it there. The exhaustive tests kill one delivery and
  one deletion at every single write they make (and a deletion again at every write of the boot
  check that finishes it); the random trials spread such kills over a busy card;
- at a random wall-clock moment of the load (random trials).

After each kill the firmware starts again on the same card, and the test checks:
- every message that got `250` after DATA is there, once, byte for byte (RETR against what was
  sent), in every mailbox it was addressed to, unless a QUIT answered `+OK` deleted it;
- no message whose DATA was not finished or was refused is visible, nor any other content; a
  message in doubt (end of data sent, no reply yet) is whole or absent;
- messages deleted by a QUIT answered `+OK` stay deleted; a QUIT in doubt deleted all or none;
- UIDs do not change across restarts; LIST sizes are what RETR sends;
- no reply before the kill is wrong; a temporary refusal (SMTP 4xx, POP3 -ERR [SYS/TEMP] or
  [IN-USE], also a session the firmware ends for lack of heap, with its traceback on the console)
  is legitimate protocol behaviour here, and what it refused must never show; whether the heap
  suffices for four clients at once is tested in test_hostile.py, where such a failure fails;
- the boot check logs a `WARN store:` line for each repair the card needed (read from the card
  before the boot) and none it did not need; no traceback or error on the console;
- fsck.fat -n on the card (after the boot check, firmware stopped) finds nothing but lost
  clusters, and no more of those than FAT cannot help (below).

What FAT cannot guarantee, stated exactly: lost clusters ("Reclaimed N unused clusters" in
fsck.fat's words: space that no file owns; it costs space, never data). FatFs writes a new
file's first cluster into the FAT before it writes the file's folder entry, and removes a file
by writing its folder entry first and freeing its clusters in the FAT after, and no call of its
API can find such clusters again. So a power cut may leave, after the boot check, at most one
lost cluster per file being created at that moment (a client creates one file at a time) plus,
for each deletion in doubt, the clusters of the largest single file it removes (a message or the
index: it removes one file at a time); more than that fails the test. The card is the default
64 MB one: FAT16, 4 KB clusters, one FAT.
"""

import random

import pytest

import crash_harness as ch
import sd_card
from crash_harness import USERS, CrashRun, Ledger, ProbeBoard, failures, format_record


@pytest.fixture
def probe_dir(app_dir, tmp_path_factory):
    return ch.probe_app(app_dir, tmp_path_factory.mktemp("probe") / "app")


@pytest.fixture
def probe_board(probe_dir, tmp_path):
    """Makes boards running the probe firmware; kills those still running after the test."""
    boards = []

    def make(data=None, **options):
        board = ProbeBoard(probe_dir, data or tmp_path / "probe-board{}".format(len(boards)), **options)
        boards.append(board)
        return board

    yield make
    for board in boards:
        if board.proc is not None:
            board.kill()


def start_with_users(board):
    board.start()
    for user, password in USERS.items():
        board.add_user(user, password)
    return board


# ---- random power cuts under load


def run_trials(probe_board, app_dir, seed, trials):
    board = start_with_users(probe_board())
    run = CrashRun(board, app_dir, random.Random(seed))
    for number in range(1, trials + 1):
        record = run.trial(number)
        broken = failures(record)
        assert not broken, "trial {} (seed {}): {}\n{}".format(number, seed, "\n".join(broken), run.report())
    print(run.report())
    kept = sum(1 for s in run.ledger.state.values() if s == "kept")
    assert kept > trials, "the load delivered almost nothing: {} messages kept".format(kept)
    return run


@pytest.mark.memory
def test_power_cuts_under_load(probe_board, app_dir):
    """A few random power cuts while two SMTP clients deliver and a POP3 client deletes."""
    run_trials(probe_board, app_dir, seed=6, trials=6)


@pytest.mark.soak
def test_power_cuts_under_load_soak(probe_board, app_dir):
    """120 random power cuts on one card (pytest --soak; -s or -rP prints the table of kills)."""
    run_trials(probe_board, app_dir, seed=20261126, trials=120)


# ---- one operation killed at each of its SD writes


def make_template(probe_board, path, messages):
    """A stopped board's data folder with users alice and bob and `messages` (user: count) of
    2-3 clusters each delivered; returns (data folder, ledger of what is there)."""
    board = start_with_users(probe_board(path))
    ledger = Ledger()
    rng = random.Random(5)
    for user, count in messages.items():
        for i in range(count):
            msg_id = "base-{}-{}".format(user, i)
            reply = ch.deliver_one(board, ledger, msg_id, ch.make_message(msg_id, rng, 9000), [user])
            assert reply.startswith("250 "), reply
    assert ch.check_after_restart(board, ledger, []) == []
    board.stop()
    assert ch.fsck(board.data / "sd.img").clean
    return board.data, ledger


def writes_of(probe_board, template, tmp_path, ledger, operation):
    """How many SD writes `operation` makes from the template's state (a dry run)."""
    board = probe_board(ch.copy_data(template, tmp_path / "dry-run")).start()
    before = board.request("probe.writes")["writes"]
    result = operation(board, ledger.copy())
    after = board.request("probe.writes")["writes"]
    board.stop()
    return after - before, result


def kill_at_every_write(probe_board, app_dir, template, ledger, tmp_path, operation):
    """Kills `operation` before each of its SD writes in turn, each time on a fresh copy of the
    template; returns the records."""
    count, result = writes_of(probe_board, template, tmp_path, ledger, operation)
    assert count > 5, (count, result)
    records = []
    for after in range(1, count + 1):
        data = ch.copy_data(template, tmp_path / "k{}".format(after))
        board = probe_board(data).start()
        records.append(ch.kill_during(board, app_dir, ledger.copy(), operation, after))
        ch.shutil.rmtree(data)
    return count, result, records


def assert_all_kept(records, what):
    report = "\n".join([ch.REPORT_HEADER] + [format_record(r) for r in records])
    broken = ["kill {}: {}".format(format_record(r).split(" | ")[1], "; ".join(failures(r))) for r in records if failures(r)]
    assert not broken, "{}: {} of {} kill points broke a promise:\n{}\n\n{}".format(what, len(broken), len(records), "\n".join(broken), report)
    print(report)


def test_delivery_to_two_mailboxes_killed_at_every_sd_write(probe_board, app_dir, tmp_path):
    template, ledger = make_template(probe_board, tmp_path / "template", {"alice": 2, "bob": 2})
    message = ch.make_message("two-boxes", random.Random(1), 9000)

    def deliver(board, ledger):
        return ch.deliver_one(board, ledger, "two-boxes", message, ["alice", "bob"])

    count, result, records = kill_at_every_write(probe_board, app_dir, template, ledger, tmp_path, deliver)
    assert result.startswith("250 "), result
    assert sum(1 for r in records if not r["stopped"]) <= 1, [r["kill"] for r in records]
    assert_all_kept(records, "a delivery to alice and bob ({} SD writes)".format(count))


def test_deletion_killed_at_every_sd_write(probe_board, app_dir, tmp_path):
    template, ledger = make_template(probe_board, tmp_path / "template", {"alice": 4})

    def delete(board, ledger):
        return ch.delete_some(board, ledger, "alice", [1, 3])

    count, result, records = kill_at_every_write(probe_board, app_dir, template, ledger, tmp_path, delete)
    assert result.startswith("+OK"), result
    assert_all_kept(records, "a QUIT deleting 2 of 4 messages ({} SD writes)".format(count))
    # The deletion is journaled: some kill points found the journal and the boot check finished it.
    assert any(any("finished a deletion" in line for line in r["boot_log"]) for r in records)


def test_deletion_killed_again_during_the_boot_check_that_finishes_it(probe_board, app_dir, tmp_path):
    """The boot check must be redoable: a deletion cut after its journal was committed is cut
    again at every SD write of the boot check finishing it, then booted normally."""
    template, ledger = make_template(probe_board, tmp_path / "template", {"alice": 4})

    def delete(board, ledger):
        return ch.delete_some(board, ledger, "alice", [1, 3])

    count, result = writes_of(probe_board, template, tmp_path, ledger, delete)
    assert result.startswith("+OK"), result
    # What each kill point leaves on the card: pick the journal just committed, the new index
    # half-written, and the files being removed.
    journals = {}
    for after in range(1, count + 1):
        data = ch.copy_data(template, tmp_path / "scan")
        board = probe_board(data).start()
        mark = len(board.lines)
        board.request("probe.arm", after=after)
        thread = ch.threading.Thread(target=delete, args=(board, ledger.copy()), daemon=True)
        thread.start()
        assert ch.wait_line(board, ch.PROBE_LINE, mark, 20)
        board.kill()
        thread.join(20)
        box = ch.inspect_card(app_dir, data / "sd.img")["boxes"]["alice"]["entries"]
        journals[after] = tuple(sorted(n for n in box if n in ("purge", "index.new")))
    committed = [k for k in journals if journals[k] == ("purge",)]
    rewriting = [k for k in journals if journals[k] == ("index.new", "purge")]
    assert committed and rewriting, journals
    chosen = sorted({committed[0], rewriting[0], committed[-1]})
    records = []
    for after in chosen:
        for boot_kill in range(1, 200):
            data = ch.copy_data(template, tmp_path / "k{}-{}".format(after, boot_kill))
            board = probe_board(data).start()
            record = ch.kill_during(board, app_dir, ledger.copy(), delete, after, boot_kill=boot_kill)
            ch.shutil.rmtree(data)
            if not record["boot_kill"].startswith("boot stopped"):
                break  # the boot check made fewer writes than that
            records.append(record)
        assert boot_kill > 3, "the boot check finishing the deletion made almost no writes"
    assert_all_kept(records, "a deletion cut at SD writes {} and again during its boot check".format(chosen))


# ---- a full card


TRACE = b"Return-Path: <tester@example.org>\r\nReceived: from crash.example (127.0.0.1 [127.0.0.1])\r\n\tby pocketpost (pocketpost) with ESMTP id 00000000;\r\n\tThu, 26 Nov 2026 00:00:00 +0000\r\n"


def exact_message(msg_id, size):
    """A message of exactly `size` octets (trace fields included when stored) ending in CRLF."""
    head = b"Subject: crash " + msg_id.encode() + b"\r\n\r\n"
    left = size - len(TRACE) - len(head)
    lines = []
    while left > 0:
        n = min(78, left)  # a line with its CRLF
        if left - n == 1:
            n -= 1  # never leave a single octet for the last line
        lines.append(b"x" * (n - 2) + b"\r\n")
        left -= n
    message = head + b"".join(lines)
    assert len(TRACE + message) == size, (len(TRACE + message), size)
    return message


def card_free(app_dir, image):
    return int(sd_card.run(app_dir, image, 'st = os.statvfs("/sd")\nprint(st[0] * st[3])').split()[-1])


def fill_card(app_dir, image, card_path, tmp_path, msg_id):
    """Writes a file at `card_path` that takes every free cluster of the card; returns its
    content (trace fields and message)."""
    free = card_free(app_dir, image)
    assert free > 100000, free
    stored = TRACE + exact_message(msg_id, free)
    source = tmp_path / "filler"
    source.write_bytes(stored)
    sd_card.run(app_dir, image, """
        with open({!r}, "rb") as src, open({!r}, "wb") as dst:
            while True:
                chunk = src.read(4096)
                if not chunk:
                    break
                dst.write(chunk)
    """.format(str(source), card_path))
    assert card_free(app_dir, image) == 0
    return stored


def full_card_board(make_board, ledger):
    """A 1 MB card (FAT12, 512-octet clusters) with three messages for alice, one each for bob
    and carol; stopped."""
    board = make_board(sd_size="1M").start()
    for user in ("alice", "bob", "carol"):
        board.add_user(user, ch.PASSWORDS[user])
    board.set_config(max_message_size=4 * 1024 * 1024)
    rng = random.Random(3)
    for msg_id, user in (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol")):
        reply = ch.deliver_one(board, ledger, msg_id, ch.make_message(msg_id, rng, 8000), [user])
        assert reply.startswith("250 "), reply
    assert ch.check_after_restart(board, ledger, [], users=ALL) == []
    board.stop()
    return board


ALL = ("alice", "bob", "carol")


def boot(board):
    mark = len(board.lines)
    board.start()
    lines = ch.boot_lines(board, mark)
    assert not [line for line in lines if "Traceback" in line], lines
    return lines


def test_full_card_at_boot_with_a_partly_received_message(make_board, app_dir, tmp_path):
    """Power was cut during a DATA that had filled the card to its last cluster, and during a
    QUIT right after its deletion journal was written: the boot check must remove the partial
    message, then finish the deletion, with no temporary error left over."""
    ledger = Ledger()
    board = full_card_board(make_board, ledger)
    image = board.data / "sd.img"
    sd_card.run(app_dir, image, 'write("/sd/mail/alice/purge", b"00000001\\n")')
    ledger.pending_deletes.append(("alice", frozenset({"a1"})))
    fill_card(app_dir, image, "/sd/tmp/m7", tmp_path, "partial")
    ledger.new("partial", b"", ["bob"])  # never finished: must not show anywhere
    lines = boot(board)
    warn = [line for line in lines if "WARN store: " in line]
    assert [line.split("WARN store: ")[1] for line in warn] == [
        "removed 1 partly received messages", "alice: finished a deletion (1 files)"], lines
    assert not ch.problems_on_console(lines)
    assert ch.check_after_restart(board, ledger, warn, users=ALL) == []
    assert set(ledger.present["alice"]) == {"a2", "a3"}
    rng = random.Random(4)
    assert ch.deliver_one(board, ledger, "after", ch.make_message("after", rng, 50000), ["bob"]).startswith("250 ")
    board.stop()
    assert ch.fsck(image).clean, ch.fsck(image).text


def test_full_card_at_boot_with_nothing_to_remove(make_board, app_dir, tmp_path):
    """The card is full of mail to its last cluster (a delivery to carol was cut between its move
    into her mailbox and its index record: never acknowledged), and a QUIT of alice was cut right
    after its deletion journal was written, so the boot check needs space to finish it. The boot
    must complete; the deletion is finished (if the boot check finds room) or left for later, all
    or nothing; every stored message stays readable; new mail gets a temporary error; once the
    administrator frees space (carol's account and mailbox removed) mail is accepted again and
    the next boot finishes the deletion; fsck finds the card clean."""
    ledger = Ledger()
    board = full_card_board(make_board, ledger)
    image = board.data / "sd.img"
    sd_card.run(app_dir, image, 'write("/sd/mail/alice/purge", b"00000001\\n")')
    ledger.pending_deletes.append(("alice", frozenset({"a1"})))
    stored = fill_card(app_dir, image, "/sd/mail/carol/0/2", tmp_path, "filler")
    ledger.new("filler", ch.strip_trace(stored), ["carol"])
    ledger.set("filler", "doubt")
    lines = boot(board)
    warn = [line for line in lines if "WARN store: " in line]
    finished = any("alice: finished a deletion" in line for line in warn)
    if not finished:
        # Left for later: said so, and nothing of it is half-done.
        assert [line for line in lines if "ERROR store: alice: boot check failed" in line], lines
    assert ch.check_after_restart(board, ledger, warn, users=ALL) == []
    assert ("a1" in ledger.present["alice"]) != finished
    assert "filler" in ledger.present["carol"]  # indexed by the boot check: it fit
    rng = random.Random(4)
    message = ch.make_message("while-full", rng, 50000)
    assert ch.deliver_one(board, ledger, "while-full", message, ["bob"]) == "452 4.3.1 Insufficient system storage"
    # The administrator frees space.
    board.request("user.del", name="carol", purge=True)
    assert ch.deliver_one(board, ledger, "freed", ch.make_message("freed", rng, 50000), ["bob"]).startswith("250 ")
    board.stop()
    lines = boot(board)
    warn = [line for line in lines if "WARN store: " in line]
    assert not ch.problems_on_console(lines), lines
    assert finished or any("alice: finished a deletion" in line for line in warn), lines
    ledger.present.pop("carol", None)
    if not finished:
        ledger.pending_deletes.append(("alice", frozenset({"a1"})))  # still in doubt until now
    assert ch.check_after_restart(board, ledger, warn, users=("alice", "bob")) == []
    assert set(ledger.present["alice"]) == {"a2", "a3"}
    board.stop()
    report = ch.fsck(image)
    assert report.clean, report.text


def test_mail_can_be_deleted_when_mail_has_filled_the_card(make_board):
    """Deliveries until the card refuses more (452, nothing half-stored): every stored message
    stays readable, and users can still delete mail, which is how space comes back; then mail is
    accepted again."""
    ledger = Ledger()
    board = make_board(sd_size="1M").start()
    for user in USERS:
        board.add_user(user, USERS[user])
    board.set_config(max_message_size=4 * 1024 * 1024)
    rng = random.Random(8)
    size = 200000
    count = 0
    refused = 0
    while size >= 60 and count < 80:
        count += 1
        msg_id = "fill{}".format(count)
        reply = ch.deliver_one(board, ledger, msg_id, ch.make_message(msg_id, rng, size), [("alice", "bob")[count % 2]])
        if reply.startswith("250 "):
            continue
        assert reply == "452 4.3.1 Insufficient system storage", reply
        refused += 1
        size //= 2
    assert refused >= 5
    free = board.request("info")["storage"]["free"]
    # Full: not even a one-cluster message fits. The firmware may keep a reserve back (for
    # deletions); not more than 128 KB of this 1 MB card.
    assert free <= 128 * 1024, free
    # Nothing half-stored, everything readable.
    assert ch.check_after_restart(board, ledger, [], users=tuple(USERS)) == []
    # Users delete mail to make room: that must work on a full card.
    assert ch.delete_some(board, ledger, "alice", [1, 2]) == "+OK Logging out."
    assert board.request("info")["storage"]["free"] > free
    assert ch.deliver_one(board, ledger, "after", ch.make_message("after", rng, 20000), ["bob"]).startswith("250 ")
    assert ch.check_after_restart(board, ledger, [], users=tuple(USERS)) == []
    board.stop()
    report = ch.fsck(board.data / "sd.img")
    assert report.clean, report.text
