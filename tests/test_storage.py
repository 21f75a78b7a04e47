"""The mail store on the SD image: durability, restarts, the boot check, a full card."""

import shutil
import subprocess
import time

import pytest

import sd_card
from wire import pop3_login, send_mail, smtp_session, strip_trace, unstuff

from messages import big_message, stuff


def retr_all(board, user="alice", password="wonderland"):
    w = pop3_login(board.pop3_port, user, password)
    count = int(w.cmd("STAT").split()[1])
    out = []
    for n in range(1, count + 1):
        w.cmd("RETR {}".format(n))
        out.append(strip_trace(unstuff(w.multiline())))
    w.cmd("QUIT")
    w.close()
    return out


def uidl(board):
    w = pop3_login(board.pop3_port)
    assert w.cmd("UIDL").startswith("+OK")
    lines = w.multiline()
    w.cmd("QUIT")
    w.close()
    return lines


def fsck(image):
    fsck_fat = shutil.which("fsck.fat") or "/sbin/fsck.fat"
    result = subprocess.run([fsck_fat, "-n", str(image)], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def test_uidl_and_messages_survive_a_restart(board):
    for i in range(5):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nbody {}".format(i, i).encode())
    before = uidl(board)
    board.restart()
    assert uidl(board) == before
    assert retr_all(board)[4] == b"Subject: 4\r\n\r\nbody 4\r\n"


def test_accepted_mail_survives_a_power_cut(board):
    """SIGKILL right after the 250: nothing is unmounted or flushed on purpose."""
    send_mail(board.smtp_port, b"Subject: durable\r\n\r\nkept")
    board.kill()
    board.start()
    assert retr_all(board) == [b"Subject: durable\r\n\r\nkept\r\n"]
    assert not board.log_has("WARN store")  # nothing needed repair


def test_completed_deletion_survives_a_power_cut(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    w = pop3_login(board.pop3_port)
    w.cmd("DELE 2")
    assert w.cmd("QUIT") == "+OK Logging out."
    board.kill()
    board.start()
    assert retr_all(board) == [b"Subject: 0\r\n\r\nx\r\n", b"Subject: 2\r\n\r\nx\r\n"]


def test_partly_received_message_is_removed_at_boot(board):
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<bob@example.org>")
    w.cmd("RCPT TO:<alice@pocketpost.local>")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: half\r\n\r\n" + b"x" * 20000)
    time.sleep(0.3)
    board.kill()
    board.start()
    assert board.wait_log("WARN store: removed 1 partly received messages")
    assert retr_all(board) == []


def test_image_is_clean_for_fsck_after_a_stop(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    w = pop3_login(board.pop3_port)
    w.cmd("DELE 1")
    w.cmd("QUIT")
    board.stop()
    code, report = fsck(board.data / "sd.img")
    assert code == 0, report


def test_image_is_clean_for_fsck_after_a_power_cut_between_transactions(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    time.sleep(0.2)
    board.kill()
    code, report = fsck(board.data / "sd.img")
    assert code == 0, report


# ---- folder layout: 100 messages to a folder; mailboxes of the first layout keep 1,000


def on_card(board, code):
    return sd_card.run(board.app_dir, board.data / "sd.img", code)


def mailbox_files(board, user="alice"):
    """The message files of a mailbox, as "<folder>/<seq>" paths."""
    prefix = "/sd/mail/{}/".format(user)
    listing = on_card(board, "for p in tree({!r}): print(p)".format(prefix[:-1]))
    return sorted(p[len(prefix) :] for p in listing.split() if p.count("/") == 5)


def test_messages_are_stored_100_to_a_folder(board):
    send_mail(board.smtp_port, b"Subject: 1\r\n\r\none")
    board.stop()
    # Message numbers run on from 199, as in a mailbox that has seen 198 messages.
    on_card(board, """
        index = read("/sd/mail/alice/index")
        write("/sd/mail/alice/index", index[:10] + b"000000199" + index[19:])
    """)
    board.start()
    send_mail(board.smtp_port, b"Subject: 199\r\n\r\nx")
    send_mail(board.smtp_port, b"Subject: 200\r\n\r\ny")
    assert retr_all(board) == [b"Subject: 1\r\n\r\none\r\n", b"Subject: 199\r\n\r\nx\r\n", b"Subject: 200\r\n\r\ny\r\n"]
    board.stop()
    assert mailbox_files(board) == ["0/1", "1/199", "2/200"]
    assert on_card(board, 'print(read("/sd/mail/alice/index")[:1])').strip() == "b'+'"


LEGACY_MESSAGES = {150: b"Subject: old 150\r\n\r\nkept\r\n", 1001: b"Subject: old 1001\r\n\r\nkept too\r\n"}
LEGACY_TRACE = b"Return-Path: <bob@example.org>\r\nReceived: from client by pocketpost; Thu, 1 Oct 2026 10:00:00 +0000\r\n"


def make_legacy_mailbox(board, with_index=True):
    """Writes alice's mailbox in the first layout, as earlier builds left it: header mark "#",
    1,000 messages to a folder (message 150 in folder 0, message 1001 in folder 1)."""
    board.stop()
    on_card(board, """
        box = "/sd/mail/alice"
        os.mkdir(box)
        os.mkdir(box + "/0")
        os.mkdir(box + "/1")
        messages = {{seq: {trace!r} + body for seq, body in {messages!r}.items()}}
        index = b"#0badc0de 000000001\\n"
        for seq in sorted(messages):
            write("{{}}/{{}}/{{}}".format(box, seq // 1000, seq), messages[seq])
            index += "{{:08d}} {{:010d}}\\n".format(seq, len(messages[seq])).encode()
        if {with_index!r}:
            write(box + "/index", index)
    """.format(messages=LEGACY_MESSAGES, trace=LEGACY_TRACE, with_index=with_index))
    board.start()


def test_mailbox_of_the_first_layout_keeps_it(board):
    make_legacy_mailbox(board)
    w = pop3_login(board.pop3_port)
    assert w.cmd("UIDL 2") == "+OK 2 0badc0de.1001"
    w.cmd("QUIT")
    assert retr_all(board) == [LEGACY_MESSAGES[150], LEGACY_MESSAGES[1001]]
    send_mail(board.smtp_port, b"Subject: new\r\n\r\nz")
    w = pop3_login(board.pop3_port)
    assert w.cmd("DELE 1") == "+OK Marked to be deleted."
    assert w.cmd("QUIT") == "+OK Logging out."
    assert retr_all(board) == [LEGACY_MESSAGES[1001], b"Subject: new\r\n\r\nz\r\n"]
    board.stop()
    assert mailbox_files(board) == ["1/1001", "1/1002"]  # not 10/1002
    assert on_card(board, 'print(read("/sd/mail/alice/index")[:1])').strip() == "b'#'"


def test_lost_index_of_a_first_layout_mailbox_is_rebuilt_in_that_layout(board):
    make_legacy_mailbox(board, with_index=False)
    assert board.wait_log("WARN store: alice: re-indexed 2 messages from the folders")
    assert retr_all(board) == [LEGACY_MESSAGES[150], LEGACY_MESSAGES[1001]]
    send_mail(board.smtp_port, b"Subject: new\r\n\r\nz")
    assert retr_all(board)[2] == b"Subject: new\r\n\r\nz\r\n"
    board.stop()
    assert mailbox_files(board) == ["0/150", "1/1001", "1/1002"]


@pytest.fixture
def small_card(make_board):
    """A board with a 1 MB SD card and a 4 MB message limit."""
    board = make_board(sd_size="1M").start()
    board.add_user("alice", "wonderland")
    board.add_user("bob", "builder")
    board.set_config(max_message_size=4 * 1024 * 1024)
    return board


def deliver(board, message, rcpts=("alice@pocketpost.local",)):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<carol@example.org>").startswith("250")
    for rcpt in rcpts:
        assert w.cmd("RCPT TO:<{}>".format(rcpt)).startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(stuff(message))
    reply = w.line()
    assert w.cmd("NOOP") == "250 2.0.0 Ok"  # the session goes on
    w.cmd("QUIT")
    return reply


def test_full_card_during_data(small_card):
    board = small_card
    kept = big_message(200 * 1024, b"kept")
    assert deliver(board, kept).startswith("250 2.0.0")
    free_before = board.request("info")["storage"]["free"]
    assert deliver(board, big_message(2 * 1024 * 1024, b"too big for the card")) == "452 4.3.1 Insufficient system storage"
    # Nothing half-stored: the space is back, the earlier message is intact.
    assert board.request("info")["storage"]["free"] == free_before
    assert retr_all(board) == [kept]
    assert deliver(board, b"Subject: small\r\n\r\nstill works\r\n").startswith("250 2.0.0")


def test_full_card_during_a_multi_recipient_delivery(small_card):
    board = small_card
    free_before = board.request("info")["storage"]["free"]
    message = big_message(int(free_before * 0.55), b"shared")
    # One copy fits, two do not: nobody gets it, and the client is told to try again.
    assert deliver(board, message, ("alice@pocketpost.local", "bob@pocketpost.local")) == "452 4.3.1 Insufficient system storage"
    assert board.request("info")["storage"]["free"] == free_before
    assert retr_all(board) == []
    assert retr_all(board, "bob", "builder") == []
    assert deliver(board, message, ("alice@pocketpost.local",)).startswith("250 2.0.0")


def test_space_comes_back_after_deletion(small_card):
    board = small_card
    size = int(board.request("info")["storage"]["free"] * 0.55)
    first = big_message(size, b"first")
    assert deliver(board, first).startswith("250 2.0.0")
    second = big_message(size, b"second")
    assert deliver(board, second) == "452 4.3.1 Insufficient system storage"
    w = pop3_login(board.pop3_port)
    w.cmd("DELE 1")
    w.cmd("QUIT")
    w.close()
    time.sleep(0.2)
    assert deliver(board, second).startswith("250 2.0.0")
    assert retr_all(board) == [second]
