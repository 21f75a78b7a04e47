"""The console service (docs/console-protocol.md), driven over the board's console pipes."""

import json
import time

import pytest

from pocketpost_host.errors import BoardError
from pocketpost_host.passwords import hash_password

from emulated_board import TEST_ITERATIONS
from wire import Wire, pop3_login, send_mail


def raw_exchange(board, line, timeout=5):
    """Sends a raw console line; returns the first reply frame that follows (or None)."""
    board._write_console(line)
    deadline = time.monotonic() + timeout
    while True:
        text = board.console.read_line(deadline)
        if text is None or text.startswith("PP< "):
            return text


def test_hello(board):
    assert board.request("hello") == {"protocol": 1, "firmware": "0.1.0", "board": "unix"}


def test_info(board):
    info = board.request("info")
    assert info["firmware"] == "0.1.0"
    assert info["ports"] == {"pop3": board.pop3_port, "smtp": board.smtp_port}
    assert info["bind"] == "127.0.0.1"
    assert info["users"] == 1
    assert info["clients"] == 0
    assert info["storage"]["state"] == "ok"
    assert 60 * 2**20 < info["storage"]["total"] <= 64 * 2**20
    assert 0 < info["storage"]["free"] <= info["storage"]["total"]
    assert info["heap_free"] > 0 and info["heap_used"] > 0
    assert info["domains"] == ["pocketpost.local"]


def test_malformed_frames(board):
    assert raw_exchange(board, b"PP> 7\n") == 'PP< 7 err BADREQ "a request is: PP> ID COMMAND [JSON]"'
    assert raw_exchange(board, b"PP> 8 user.add {not json\n").startswith("PP< 8 err BADREQ ")
    assert raw_exchange(board, b'PP> 9 user.add ["a list"]\n') == 'PP< 9 err BADREQ "arguments must be a JSON object"'
    assert raw_exchange(board, b"PP> 10 frobnicate\n").startswith('PP< 10 err UNKNOWN "unknown command; known: ')
    # An id that is not UTF-8 cannot be echoed: the reply says "-".
    assert raw_exchange(board, b"PP> \xff hello\n").startswith('PP< - err BADREQ "malformed request: ')
    # Lines that are not requests are ignored; the service keeps answering.
    board._write_console(b"hello there\n\r\n" + b"x" * 5000 + b"\n")
    assert board.request("hello")["protocol"] == 1


def test_overlong_request_gets_no_reply(board):
    line = b'PP> 11 user.add {"name": "' + b"a" * 1100 + b'"}\n'
    assert raw_exchange(board, line, timeout=1) is None
    assert board.request("hello")["protocol"] == 1


def test_user_add_list_passwd_del(board):
    board.add_user("bob", "builder", apop="apop-secret")
    users = board.request("user.list")["users"]
    assert users == [
        {"name": "alice", "apop": False, "messages": 0},
        {"name": "bob", "apop": True, "messages": 0},
    ]
    board.request("user.passwd", name="bob", hash=hash_password("new-pass", TEST_ITERATIONS), apop=None)
    assert board.request("user.list")["users"][1]["apop"] is False
    pop3_login(board.pop3_port, "bob", "new-pass").cmd("QUIT")
    board.request("user.del", name="bob")
    assert [u["name"] for u in board.request("user.list")["users"]] == ["alice"]


def test_user_check_compares_a_hash_without_revealing_the_stored_one(board):
    stored = hash_password("wonderland-2", TEST_ITERATIONS)
    board.request("user.passwd", name="alice", hash=stored)
    params = board.request("user.check", name="alice")
    _, iterations, salt, _ = stored.split("$")
    assert params == {"name": "alice", "iterations": int(iterations), "salt": salt}
    same_salt = hash_password("wonderland-2", params["iterations"], bytes.fromhex(params["salt"]))
    assert same_salt == stored
    assert board.request("user.check", name="alice", hash=same_salt)["same"] is True
    wrong = hash_password("something else", params["iterations"], bytes.fromhex(params["salt"]))
    assert board.request("user.check", name="alice", hash=wrong)["same"] is False
    other_salt = hash_password("wonderland-2", TEST_ITERATIONS)
    assert board.request("user.check", name="alice", hash=other_salt)["same"] is False
    with pytest.raises(BoardError, match="NOTFOUND"):
        board.request("user.check", name="nobody")
    with pytest.raises(BoardError, match="INVALID"):
        board.request("user.check", name="alice", hash="plaintext")


def test_user_whose_name_ends_like_a_new_record_is_a_user_of_its_own(board):
    """Replacing alice's record must leave user "alice.new" alone (and the other way round)."""
    board.add_user("alice.new", "other")
    board.request("user.passwd", name="alice", hash=hash_password("changed", TEST_ITERATIONS))
    assert sorted(u["name"] for u in board.request("user.list")["users"]) == ["alice", "alice.new"]
    pop3_login(board.pop3_port, "alice.new", "other").cmd("QUIT")
    pop3_login(board.pop3_port, "alice", "changed").cmd("QUIT")


def test_user_errors(board):
    good_hash = hash_password("x", TEST_ITERATIONS)
    cases = [
        ("user.add", {"name": "alice", "hash": good_hash}, "EXISTS"),
        ("user.add", {"name": "Alice", "hash": good_hash}, "INVALID"),
        ("user.add", {"name": "../etc", "hash": good_hash}, "INVALID"),
        ("user.add", {"name": ".hidden", "hash": good_hash}, "INVALID"),
        ("user.add", {"name": "alice.", "hash": good_hash}, "INVALID"),  # FAT would open alice's mailbox
        ("user.add", {"name": "a" * 65, "hash": good_hash}, "INVALID"),
        ("user.add", {"name": "carol", "hash": "plaintext"}, "INVALID"),
        ("user.add", {"name": "carol", "hash": "pbkdf2-sha256$10$00$00"}, "INVALID"),
        ("user.add", {"name": "carol"}, "INVALID"),
        ("user.add", {"name": 5, "hash": good_hash}, "INVALID"),
        ("user.del", {"name": "nobody"}, "NOTFOUND"),
        ("user.passwd", {"name": "nobody", "hash": good_hash}, "NOTFOUND"),
        ("user.passwd", {"name": "alice", "hash": good_hash, "apop": 7}, "INVALID"),
        ("mailbox.stats", {"name": "nobody"}, "NOTFOUND"),
    ]
    for command, args, code in cases:
        with pytest.raises(BoardError) as e:
            board.request(command, **args)
        assert e.value.code == code, (command, args, e.value)
    assert [u["name"] for u in board.request("user.list")["users"]] == ["alice"]


def test_user_del_with_and_without_purge(board):
    send_mail(board.smtp_port, b"Subject: kept\r\n\r\nx")
    board.request("user.del", name="alice")
    assert board.request("mailbox.stats", name="alice")["mailboxes"][0]["messages"] == 1
    board.add_user("alice", "again")
    w = pop3_login(board.pop3_port, "alice", "again")
    assert w.cmd("STAT").startswith("+OK 1 ")
    # A mailbox in use cannot be purged.
    with pytest.raises(BoardError) as e:
        board.request("user.del", name="alice", purge=True)
    assert e.value.code == "BUSY"
    w.cmd("QUIT")
    time.sleep(0.2)
    assert board.request("user.del", name="alice", purge=True) == {"name": "alice", "purged": True}
    with pytest.raises(BoardError) as e:
        board.request("mailbox.stats", name="alice")
    assert e.value.code == "NOTFOUND"


def test_config_get_and_set(board):
    config = board.request("config.get")
    assert config["config"]["max_clients"] == 4
    assert config["config"]["wifi_password"] == ""
    assert sorted(config["overridden"]) == ["bind", "pop3_port", "pop3s_port", "smtp_port", "smtps_port", "submission_port"]
    assert board.request("config.set", key="max_message_size", value="20000") == {
        "key": "max_message_size", "value": 20000, "applies": "now", "overridden": False}
    assert board.request("config.get", key="max_message_size")["value"] == 20000
    assert board.request("config.set", key="wifi_password", value="hunter2")["value"] == "********"
    assert board.request("config.get", key="wifi_password")["value"] == "********"
    assert board.request("config.set", key="pop3_port", value=995)["overridden"] is True
    assert board.request("config.set", key="domains", value="a.example, B.Example")["value"] == ["a.example", "b.example"]
    assert board.request("config.set", key="max_clients", value=6)["applies"] == "reboot"


@pytest.mark.parametrize(
    "key, value",
    [
        ("no_such_key", 1),
        ("max_clients", 0),
        ("max_clients", "many"),
        ("max_clients", True),
        ("max_recipients", 99),
        ("pop3_port", 70000),
        ("domains", ""),
        ("domains", "bad domain"),
        ("hostname", "-bad-"),
        ("bind", "1.2.3"),
        ("postmaster", "../x"),
        ("wifi_ssid", "x" * 33),
        ("wifi_password", "line\nbreak"),
    ],
)
def test_config_set_refuses_bad_values(board, key, value):
    before = board.request("config.get")["config"]
    with pytest.raises(BoardError) as e:
        board.request("config.set", key=key, value=value)
    assert e.value.code == "INVALID"
    assert board.request("config.get")["config"] == before


def test_config_survives_a_restart(board):
    board.set_config(max_message_size=30000, postmaster="alice")
    board.restart()
    config = board.request("config.get")["config"]
    assert config["max_message_size"] == 30000 and config["postmaster"] == "alice"


@pytest.mark.memory
def test_mailbox_stats(board):
    send_mail(board.smtp_port, b"Subject: a\r\n\r\nx")
    send_mail(board.smtp_port, b"Subject: b\r\n\r\ny")
    [stats] = board.request("mailbox.stats")["mailboxes"]
    w = pop3_login(board.pop3_port)
    octets = int(w.cmd("STAT").split()[2])
    assert stats == {"name": "alice", "messages": 2, "octets": octets, "locked": False}
    assert board.request("mailbox.stats", name="alice")["mailboxes"][0]["locked"] is True


@pytest.mark.memory
def test_log_tail(board):
    assert board.request("log.tail", n=1000)["lines"][0].endswith(" INFO boot: pocketpost 0.1.0 on board unix")
    for i in range(90):
        board.request("config.set", key="max_bad_commands", value=10 + i)
    lines = board.request("log.tail", n=3)["lines"]
    assert len(lines) == 3
    assert all(line.endswith("INFO console: config max_bad_commands set") for line in lines)
    kept = board.request("log.tail", n=1000)["lines"]
    # The ring keeps the newest 2 KB of whole lines: the boot lines have gone.
    assert 2048 - 100 < sum(len(line) + 1 for line in kept) <= 2048
    # (A request that ran short of memory and was run again says so in a line of its own.)
    assert all(line.endswith("INFO console: config max_bad_commands set") for line in kept if "run again" not in line)
    assert kept[-3:] == lines or "run again" in " ".join(kept[-4:])
    assert board.request("log.tail")["lines"] == kept[-20:]


def test_console_works_while_clients_are_served(board):
    w = pop3_login(board.pop3_port)
    s = Wire(board.smtp_port)
    s.line()
    assert board.request("info")["clients"] == 2
    assert w.cmd("STAT") == "+OK 0 0"


def test_reboot_exits_for_the_simulator_to_restart(board):
    assert board.request("reboot") == {}
    assert board.wait_exit() == 75
    board.start()
    assert [u["name"] for u in board.request("user.list")["users"]] == ["alice"]


def test_ctrl_c_stops_the_firmware_cleanly(board):
    send_mail(board.smtp_port, b"Subject: before ctrl-c\r\n\r\nx")
    assert board.stop() == 0
    assert board.wait_log("INFO boot: interrupted (Ctrl-C)")
    board.start()
    assert board.request("mailbox.stats", name="alice")["mailboxes"][0]["messages"] == 1


def test_replies_are_one_json_line_without_control_bytes(board):
    board.request("config.set", key="wifi_ssid", value="caf\u00e9 \"quoted\"")
    line = raw_exchange(board, b'PP> 42 config.get {"key": "wifi_ssid"}\n')
    assert line.startswith("PP< 42 ok ")
    assert json.loads(line[len("PP< 42 ok "):])["value"] == "caf\u00e9 \"quoted\""
    assert "\x03" not in line
