"""The boot check repairs what an interrupted change left on the card."""

import pytest

import sd_card
from wire import pop3_login, send_mail, unstuff


def messages(board):
    w = pop3_login(board.pop3_port)
    count = int(w.cmd("STAT").split()[1])
    out = []
    for n in range(1, count + 1):
        uid = w.cmd("UIDL {}".format(n)).split()[2]
        w.cmd("RETR {}".format(n))
        out.append((uid, unstuff(w.multiline())))
    w.cmd("QUIT")
    w.close()
    return out


@pytest.fixture
def stopped_with_mail(board, app_dir):
    """A board with three messages for alice, stopped; returns (board, run on its image)."""
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nbody {}".format(i, i).encode())
    before = messages(board)
    board.stop()
    image = board.data / "sd.img"
    return board, before, lambda code: sd_card.run(app_dir, image, code)


def test_message_renamed_but_not_indexed_is_indexed(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    # The crash came between the rename into the mailbox and the index append.
    on_card("""
        box = "/sd/mail/alice"
        write(box + "/0/4", b"Subject: orphan\\r\\n\\r\\nfound\\r\\n")
    """)
    board.start()
    assert board.wait_log("WARN store: alice: indexed message 4 found after a crash")
    after = messages(board)
    assert after[:3] == before
    assert after[3][1] == b"Subject: orphan\r\n\r\nfound\r\n"


def test_interrupted_deletion_is_finished(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    # The journal was written (seq 2 to go), then power was lost before anything else.
    on_card("""
        write("/sd/mail/alice/purge", b"00000002\\n")
    """)
    board.start()
    assert board.wait_log("WARN store: alice: finished a deletion (1 files)")
    assert messages(board) == [before[0], before[2]]
    listing = sd_card.run(board.app_dir, board.data / "sd.img", "print(sorted(tree()))")
    assert "/sd/mail/alice/0/2" not in listing and "purge" not in listing


def test_interrupted_index_rewrite_is_finished(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    # The new index was complete and the old one removed, but the rename had not happened.
    on_card("""
        box = "/sd/mail/alice"
        old = read(box + "/index")
        write(box + "/purge", b"00000001\\n")
        write(box + "/index.new", old[:20] + old[40:])
        os.remove(box + "/index")
    """)
    board.start()
    assert messages(board) == before[1:]


def test_damaged_index_tail_is_trimmed_and_its_message_reindexed(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    on_card("""
        box = "/sd/mail/alice"
        index = read(box + "/index")
        write(box + "/index", index[:-20] + b"\\x00" * 13)
    """)
    board.start()
    assert board.wait_log("WARN store: alice: trimmed a damaged index tail to 2 records")
    assert board.wait_log("WARN store: alice: indexed message 3 found after a crash")
    assert messages(board) == before


def test_lost_index_is_rebuilt_from_the_folders(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    on_card("""
        os.remove("/sd/mail/alice/index")
    """)
    board.start()
    assert board.wait_log("WARN store: alice: re-indexed 3 messages from the folders")
    after = messages(board)
    # The contents survive; the UIDs change with the new mailbox generation.
    assert [m for _, m in after] == [m for _, m in before]


def test_deletion_after_one_that_stopped_part_way_finishes_both(stopped_with_mail):
    board, before, on_card = stopped_with_mail
    # A deletion of message 1 committed its journal, then stopped on a card error; in the same
    # boot a session deletes message 3. The firmware's own Mailbox runs on the card here.
    out = on_card("""
        from pocketpost.mailbox import Mailbox
        write("/sd/mail/alice/purge", b"00000001\\n")
        box = Mailbox("/sd/mail", "alice")
        # One step per file removed, the earlier deletion's included (the other tasks get turns).
        print(sum(1 for _ in box.delete(iter([3]), bytearray(200))))
        print(sorted(p for p in tree("/sd/mail/alice") if not p.endswith("/0")))
    """)
    assert out.splitlines() == ["2", "['/sd/mail/alice/0/2', '/sd/mail/alice/index']"]
    board.start()
    assert messages(board) == [before[1]]
    assert not board.log_has("WARN store")  # nothing was left to repair
