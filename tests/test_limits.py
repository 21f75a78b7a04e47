"""Limits of a small board, at the heap limit the tests run with: concurrent clients, big
messages, big mailboxes, and memory that comes back after the load."""

import threading
import time

import pytest

from messages import MB, big_message, stuff
from wire import Wire, pop3_login, smtp_session, strip_trace, unstuff

def test_client_limit_refuses_the_extra_client_at_once(board):
    clients = [pop3_login(board.pop3_port), smtp_session(board.smtp_port), Wire(board.pop3_port), Wire(board.smtp_port)]
    clients[2].line()
    clients[3].line()
    extra = Wire(board.pop3_port)
    assert extra.line() == "-ERR [SYS/TEMP] Too many clients, try again later."
    assert extra.closed()
    extra = Wire(board.smtp_port)
    assert extra.line() == "421 4.3.2 Too many connections, try again later"
    assert extra.closed()
    # The four keep working, and a place freed is taken again.
    assert clients[0].cmd("STAT") == "+OK 0 0"
    assert clients[1].cmd("NOOP") == "250 2.0.0 Ok"
    clients[2].cmd("QUIT")
    assert clients[2].closed()
    time.sleep(0.2)
    again = Wire(board.pop3_port)
    assert again.line().startswith("+OK pocketpost")
    assert board.wait_log("refused: 4 clients already")


def send_big(port, message, results, key, rcpt="alice@pocketpost.local"):
    try:
        w = smtp_session(port)
        assert w.cmd("MAIL FROM:<bob@example.org> SIZE={}".format(len(message))).startswith("250")
        assert w.cmd("RCPT TO:<{}>".format(rcpt)).startswith("250")
        assert w.cmd("DATA").startswith("354")
        w.send(stuff(message))
        results[key] = w.line()
        w.cmd("QUIT")
    except Exception as e:  # reported by the test thread
        results[key] = repr(e)


def test_five_megabyte_message_in_and_out(board):
    message = big_message(5 * MB)
    results = {}
    send_big(board.smtp_port, message, results, "in")
    assert results["in"].startswith("250 2.0.0"), results
    w = pop3_login(board.pop3_port)
    listed = int(w.cmd("LIST 1").split()[2])
    status = w.cmd("RETR 1")
    raw = w.multiline()
    assert status == "+OK {} octets".format(listed)
    assert listed == len(unstuff(raw))
    assert strip_trace(unstuff(raw)) == message


@pytest.mark.memory
def test_four_clients_moving_megabytes_at_once(board):
    board.add_user("bob", "builder")
    board.add_user("carol", "secret")
    first = big_message(MB, b"first")
    results = {}
    send_big(board.smtp_port, first, results, "setup")
    assert results["setup"].startswith("250 2.0.0")
    before = board.settled_heap()

    def fetch(user, password, key):
        try:
            w = pop3_login(board.pop3_port, user, password)
            count = int(w.cmd("STAT").split()[1])
            got = []
            for n in range(1, count + 1):
                assert w.cmd("RETR {}".format(n)).startswith("+OK")
                got.append(strip_trace(unstuff(w.multiline())))
            w.cmd("QUIT")
            results[key] = got
        except Exception as e:
            results[key] = repr(e)

    messages = [big_message(MB, bytes([65 + i])) for i in range(2)]
    threads = [
        threading.Thread(target=send_big, args=(board.smtp_port, messages[0], results, "s0", "carol@pocketpost.local")),
        threading.Thread(target=send_big, args=(board.smtp_port, messages[1], results, "s1", "carol@pocketpost.local")),
        threading.Thread(target=fetch, args=("alice", "wonderland", "alice")),
        threading.Thread(target=fetch, args=("bob", "builder", "bob")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["s0"].startswith("250 2.0.0") and results["s1"].startswith("250 2.0.0"), results
    assert results["alice"] == [first]
    assert results["bob"] == []
    w = pop3_login(board.pop3_port, "carol", "secret")
    assert w.cmd("STAT").startswith("+OK 2 ")
    got = []
    for n in (1, 2):
        assert w.cmd("RETR {}".format(n)).startswith("+OK")
        got.append(strip_trace(unstuff(w.multiline())))
    assert sorted(got) == sorted(messages)
    w.cmd("QUIT")
    w.close()
    # Memory comes back: no leak across sessions (the margin is for the heap's fragments).
    assert board.settled_heap() > before - 2048


def fill_mailbox(board, count, batch=250):
    """Delivers `count` small messages over pipelined SMTP transactions."""
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        envelope = b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@pocketpost.local>\r\nDATA\r\n"
        w = smtp_session(board.smtp_port)
        w.send(envelope)
        for i in range(n):
            assert w.line().startswith("250 2.1.0")
            assert w.line().startswith("250 2.1.5")
            assert w.line().startswith("354")
            more = envelope if i + 1 < n else b"QUIT\r\n"
            w.send("Subject: message {}\r\n\r\nbody {}\r\n.\r\n".format(sent + i + 1, sent + i + 1).encode() + more)
            assert w.line().startswith("250 2.0.0")
        assert w.line().startswith("221")
        w.close()
        sent += n


@pytest.mark.memory
def test_mailbox_of_five_thousand_messages(board):
    fill_mailbox(board, 5000)
    start = time.monotonic()
    w = pop3_login(board.pop3_port)
    stat = w.cmd("STAT").split()
    login_seconds = time.monotonic() - start
    assert stat[1] == "5000"
    assert w.cmd("UIDL").startswith("+OK")
    uids = w.multiline().split(b"\r\n")[:-1]
    assert len(uids) == 5000 and len({u.split()[1] for u in uids}) == 5000
    assert w.cmd("LIST").startswith("+OK 5000 messages")
    sizes = [int(line.split()[1]) for line in w.multiline().split(b"\r\n")[:-1]]
    assert sum(sizes) == int(stat[2])
    assert w.cmd("RETR 4321").startswith("+OK")
    assert strip_trace(unstuff(w.multiline())) == b"Subject: message 4321\r\n\r\nbody 4321\r\n"
    for n in range(1, 5001, 2):
        w.send("DELE {}\r\n".format(n))
    for n in range(1, 5001, 2):
        assert w.line() == "+OK Marked to be deleted."
    assert w.cmd("QUIT") == "+OK Logging out."
    w.close()
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").split()[1] == "2500"
    assert w.cmd("RETR 1").startswith("+OK")
    assert strip_trace(unstuff(w.multiline())) == b"Subject: message 2\r\n\r\nbody 2\r\n"
    assert w.cmd("UIDL 2500").split()[2] == uids[4999].split()[1].decode()
    print("login+STAT on 5,000 messages took {:.3f} s".format(login_seconds))
