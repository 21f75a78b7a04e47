"""POP3 (RFC 1939, 2449, 5034) against the firmware on the emulated board, byte-exact."""

import base64
import hashlib
import re
import time

import pytest

from wire import Wire, pop3_login, send_mail, strip_trace, unstuff

# What CAPA lists in every state, then what it adds while logins are possible (AUTHORIZATION,
# and no TLS required or inside TLS): RFC 2449 lets the list follow the state.
CAPA_ALWAYS = [
    "TOP",
    "UIDL",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "PIPELINING",
    "EXPIRE NEVER",
    "IMPLEMENTATION pocketpost-0.1.0",
]
CAPA_LOGIN = ["USER", "SASL PLAIN LOGIN"]

# Content as a client sends it in DATA (dot-stuffed) and as it must be stored (unstuffed).
TRICKY_SENT = b"Subject: dots\r\n\r\n..starts with a dot\r\n..\r\n...two dots\r\nmiddle . dot\r\n..\r\nlast line"
TRICKY_STORED = b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two dots\r\nmiddle . dot\r\n.\r\nlast line\r\n"


def capa(w):
    assert w.cmd("CAPA") == "+OK Capability list follows"
    return w.multiline().decode().split("\r\n")[:-1]


def retr(w, n):
    status = w.cmd("RETR {}".format(n))
    assert re.fullmatch(r"\+OK \d+ octets", status), status
    raw = w.multiline()
    return int(status.split()[1]), raw


def test_greeting_has_no_timestamp_without_apop_users(board):
    w = Wire(board.pop3_port)
    assert w.line() == "+OK pocketpost POP3 ready."


def test_greeting_has_apop_timestamp_when_a_user_has_apop(board):
    board.add_user("bob", "builder", apop="apop-secret")
    w = Wire(board.pop3_port)
    assert re.fullmatch(r"\+OK pocketpost POP3 ready\. <\d+\.\d+@pocketpost>", w.line())


def test_capa_before_and_after_login(board):
    w = Wire(board.pop3_port)
    w.line()
    assert capa(w) == CAPA_ALWAYS + CAPA_LOGIN
    assert w.cmd("USER alice") == "+OK Send PASS."
    assert w.cmd("PASS wonderland") == "+OK Logged in, 0 messages (0 octets)."
    assert capa(w) == CAPA_ALWAYS


def test_user_pass_login_and_quit(board):
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT") == "+OK 0 0"
    assert w.cmd("QUIT") == "+OK Logging out."
    assert w.closed()


def test_commands_are_case_insensitive(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("user alice").startswith("+OK")
    assert w.cmd("PaSs wonderland").startswith("+OK")
    assert w.cmd("sTaT") == "+OK 0 0"
    assert w.cmd("noop") == "+OK"


def test_wrong_password_and_unknown_user_get_the_same_delayed_auth_error(board):
    board.set_config(auth_fail_delay_ms=300)
    w = Wire(board.pop3_port)
    w.line()
    for user in ("alice", "nobody"):
        assert w.cmd("USER " + user) == "+OK Send PASS."
        start = time.monotonic()
        assert w.cmd("PASS wrong") == "-ERR [AUTH] Authentication failed."
        assert time.monotonic() - start >= 0.29
    assert board.wait_log("login failed: alice")


def test_pass_without_user(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("PASS wonderland") == "-ERR No user name given."
    # A PASS after a failed one needs a new USER too.
    assert w.cmd("USER alice").startswith("+OK")
    assert w.cmd("PASS wonderland").startswith("+OK")


def test_transaction_commands_before_login_are_refused(board):
    w = Wire(board.pop3_port)
    w.line()
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL"):
        assert w.cmd(command) == "-ERR Command not valid in this state."


def test_authorization_commands_after_login_are_refused(board):
    w = pop3_login(board.pop3_port)
    for command in ("USER alice", "PASS wonderland", "APOP alice 0123", "AUTH PLAIN"):
        assert w.cmd(command) == "-ERR Command not valid in this state."


def test_quit_in_authorization_state(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("QUIT") == "+OK Logging out."
    assert w.closed()


def test_stat_list_uidl_retr_sizes_match_what_retr_sends(board):
    send_mail(board.smtp_port, b"Subject: one\r\n\r\nfirst")
    send_mail(board.smtp_port, TRICKY_SENT)
    w = pop3_login(board.pop3_port)
    stat = w.cmd("STAT").split()
    assert stat[0] == "+OK" and stat[1] == "2"
    assert w.cmd("LIST") == "+OK 2 messages ({} octets)".format(stat[2])
    listing = w.multiline().decode().split("\r\n")[:-1]
    sizes = {}
    for line in listing:
        n, size = line.split(" ")
        sizes[int(n)] = int(size)
    assert sorted(sizes) == [1, 2]
    assert sum(sizes.values()) == int(stat[2])
    for n in (1, 2):
        assert w.cmd("LIST {}".format(n)) == "+OK {} {}".format(n, sizes[n])
        octets, raw = retr(w, n)
        # RFC 1939: the size is that of the message as stored, before byte-stuffing.
        assert octets == sizes[n] == len(unstuff(raw))


def test_retr_byte_stuffs_lines_starting_with_a_dot(board):
    send_mail(board.smtp_port, TRICKY_SENT)
    w = pop3_login(board.pop3_port)
    _, raw = retr(w, 1)
    message = unstuff(raw)
    assert strip_trace(message) == TRICKY_STORED
    # On the wire every stored line that starts with "." carries one more.
    assert strip_trace(raw) == (
        b"Subject: dots\r\n\r\n..starts with a dot\r\n..\r\n...two dots\r\nmiddle . dot\r\n..\r\nlast line\r\n"
    )


def test_message_containing_crlf_dot_crlf_round_trips(board):
    body = b"Subject: end marker inside\r\n\r\nbefore\r\n..\r\nafter\r\n.."
    send_mail(board.smtp_port, body)
    w = pop3_login(board.pop3_port)
    _, raw = retr(w, 1)
    assert strip_trace(unstuff(raw)) == b"Subject: end marker inside\r\n\r\nbefore\r\n.\r\nafter\r\n.\r\n"


def test_empty_message(board):
    send_mail(board.smtp_port, b"")
    w = pop3_login(board.pop3_port)
    octets, raw = retr(w, 1)
    assert strip_trace(raw) == b""
    assert octets == len(raw)


def test_list_and_uidl_of_bad_message_numbers(board):
    board.set_config(max_bad_commands=100)  # this many invalid arguments would end the session
    send_mail(board.smtp_port, b"Subject: x\r\n\r\nx")
    w = pop3_login(board.pop3_port)
    for command in ("LIST", "UIDL", "RETR", "DELE", "TOP"):
        args = " 1" if command == "TOP" else ""
        assert w.cmd("{} 2{}".format(command, args)) == "-ERR No such message."
        assert w.cmd("{} 0{}".format(command, args)) == "-ERR No such message."
        assert w.cmd("{} x{}".format(command, args)) == "-ERR Invalid arguments."
        assert w.cmd("{} -1{}".format(command, args)) == "-ERR Invalid arguments."
    assert w.cmd("RETR") == "-ERR Invalid arguments."
    assert w.cmd("TOP 1") == "-ERR Invalid arguments."
    assert w.cmd("TOP 1 x") == "-ERR Invalid arguments."
    assert w.cmd("STAT").startswith("+OK 1 ")


def test_uidl_format_and_uniqueness(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    w = pop3_login(board.pop3_port)
    assert w.cmd("UIDL") == "+OK Unique-ID listing follows"
    lines = w.multiline().decode().split("\r\n")[:-1]
    uids = {}
    for line in lines:
        n, uid = line.split(" ")
        assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)
        uids[int(n)] = uid
    assert sorted(uids) == [1, 2, 3] and len(set(uids.values())) == 3
    assert w.cmd("UIDL 2") == "+OK 2 " + uids[2]


def test_uids_are_never_reused_even_after_every_message_is_deleted(board):
    seen = set()
    for round_ in range(3):
        send_mail(board.smtp_port, b"Subject: again\r\n\r\nx")
        w = pop3_login(board.pop3_port)
        uid = w.cmd("UIDL 1").split()[2]
        assert uid not in seen
        seen.add(uid)
        assert w.cmd("DELE 1") == "+OK Marked to be deleted."
        assert w.cmd("QUIT") == "+OK Logging out."
        w.close()
        if round_ == 1:
            board.restart()


def test_dele_marks_and_hides_then_rset_unmarks(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    w = pop3_login(board.pop3_port)
    count, octets = map(int, w.cmd("STAT").split()[1:])
    size2 = int(w.cmd("LIST 2").split()[2])
    assert w.cmd("DELE 2") == "+OK Marked to be deleted."
    assert w.cmd("DELE 2") == "-ERR Message is deleted."
    assert w.cmd("STAT") == "+OK 2 {}".format(octets - size2)
    for command in ("RETR 2", "TOP 2 0", "LIST 2", "UIDL 2"):
        assert w.cmd(command) == "-ERR Message is deleted."
    assert w.cmd("LIST").startswith("+OK 2 messages")
    assert [l.split()[0] for l in w.multiline().decode().split("\r\n")[:-1]] == ["1", "3"]
    assert w.cmd("UIDL").startswith("+OK")
    assert [l.split()[0] for l in w.multiline().decode().split("\r\n")[:-1]] == ["1", "3"]
    assert w.cmd("RSET") == "+OK 3 messages ({} octets).".format(octets)
    assert w.cmd("STAT") == "+OK 3 {}".format(octets)
    assert w.cmd("LIST 2") == "+OK 2 {}".format(size2)


def test_dele_then_quit_removes_for_good(board):
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nbody {}".format(i, i).encode())
    w = pop3_login(board.pop3_port)
    uids = [w.cmd("UIDL {}".format(n)).split()[2] for n in (1, 2, 3)]
    assert w.cmd("DELE 1").startswith("+OK")
    assert w.cmd("DELE 3").startswith("+OK")
    assert w.cmd("QUIT") == "+OK Logging out."
    w.close()
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")
    assert w.cmd("UIDL 1") == "+OK 1 " + uids[1]
    _, raw = retr(w, 1)
    assert strip_trace(raw) == b"Subject: 1\r\n\r\nbody 1\r\n"
    w.close()
    board.restart()
    w = pop3_login(board.pop3_port)
    assert w.cmd("UIDL") .startswith("+OK")
    assert w.multiline() == "1 {}\r\n".format(uids[1]).encode()


def test_dele_then_dropped_connection_deletes_nothing(board):
    send_mail(board.smtp_port, b"Subject: keep\r\n\r\nx")
    w = pop3_login(board.pop3_port)
    assert w.cmd("DELE 1").startswith("+OK")
    w.close()  # no QUIT
    time.sleep(0.3)
    w = pop3_login(board.pop3_port)  # the lock was released
    assert w.cmd("STAT").startswith("+OK 1 ")


def test_top(board):
    message = b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n..line 2\r\nline 3"
    send_mail(board.smtp_port, message)
    w = pop3_login(board.pop3_port)
    assert w.cmd("TOP 1 0") == "+OK Top of message follows"
    assert strip_trace(w.multiline()) == b"From: a@example.org\r\nSubject: top\r\n\r\n"
    assert w.cmd("TOP 1 2").startswith("+OK")
    assert strip_trace(w.multiline()) == b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n..line 2\r\n"
    assert w.cmd("TOP 1 99").startswith("+OK")
    assert strip_trace(w.multiline()) == b"From: a@example.org\r\nSubject: top\r\n\r\nline 1\r\n..line 2\r\nline 3\r\n"


def test_top_of_message_without_body(board):
    send_mail(board.smtp_port, b"Subject: only a header")
    w = pop3_login(board.pop3_port)
    assert w.cmd("TOP 1 5").startswith("+OK")
    assert strip_trace(w.multiline()) == b"Subject: only a header\r\n"


def test_second_login_gets_in_use_until_the_first_quits(board):
    first = pop3_login(board.pop3_port)
    second = Wire(board.pop3_port)
    second.line()
    assert second.cmd("USER alice").startswith("+OK")
    assert second.cmd("PASS wonderland") == "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    assert first.cmd("QUIT").startswith("+OK")
    # The lock is gone by the time QUIT is answered.
    assert second.cmd("USER alice").startswith("+OK")
    assert second.cmd("PASS wonderland").startswith("+OK")


def test_mail_delivered_during_a_session_appears_in_the_next(board):
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT") == "+OK 0 0"
    send_mail(board.smtp_port, b"Subject: late\r\n\r\nx")
    assert w.cmd("STAT") == "+OK 0 0"
    assert w.cmd("LIST").startswith("+OK 0 messages")
    assert w.multiline() == b""
    assert w.cmd("QUIT").startswith("+OK")
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")


def test_deleting_while_new_mail_arrives_keeps_the_new_mail(board):
    send_mail(board.smtp_port, b"Subject: old\r\n\r\nx")
    w = pop3_login(board.pop3_port)
    assert w.cmd("DELE 1").startswith("+OK")
    send_mail(board.smtp_port, b"Subject: new\r\n\r\ny")
    assert w.cmd("QUIT").startswith("+OK")
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")
    _, raw = retr(w, 1)
    assert strip_trace(raw) == b"Subject: new\r\n\r\ny\r\n"


def test_noop_and_rset_replies(board):
    w = pop3_login(board.pop3_port)
    assert w.cmd("NOOP") == "+OK"
    assert w.cmd("RSET") == "+OK 0 messages (0 octets)."


def test_pipelined_commands_are_answered_in_order(board):
    for i in range(2):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nx".format(i).encode())
    w = Wire(board.pop3_port)
    w.line()
    w.send("USER alice\r\nPASS wonderland\r\nSTAT\r\nLIST 1\r\nRETR 2\r\nNOOP\r\nBOGUS\r\nQUIT\r\n")
    assert w.line() == "+OK Send PASS."
    assert w.line().startswith("+OK Logged in, 2 messages")
    assert w.line().startswith("+OK 2 ")
    assert w.line().startswith("+OK 1 ")
    assert w.line().endswith(" octets")
    assert strip_trace(w.multiline()) == b"Subject: 1\r\n\r\nx\r\n"
    assert w.line() == "+OK"
    assert w.line() == "-ERR Unknown command."
    assert w.line() == "+OK Logging out."
    assert w.closed()


def test_overlong_command_line_is_refused_and_the_session_stays_in_sync(board):
    w = Wire(board.pop3_port)
    w.line()
    # 255 octets including CRLF is the longest allowed command line (RFC 2449).
    assert w.cmd("NOOP " + "x" * (255 - 7)) == "-ERR Command not valid in this state."
    assert w.cmd("NOOP " + "x" * (255 - 6)) == "-ERR Line too long."
    assert w.cmd("USER " + "a" * 100000) == "-ERR Line too long."
    assert w.cmd("USER alice") == "+OK Send PASS."
    assert w.cmd("PASS wonderland").startswith("+OK Logged in")


def test_too_many_bad_commands_close_the_session(board):
    board.set_config(max_bad_commands=3)
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("FOO") == "-ERR Unknown command."
    assert w.cmd("BAR") == "-ERR Unknown command."
    assert w.cmd("BAZ") == "-ERR Too many bad commands, closing connection."
    assert w.closed()


TOO_MANY = b"-ERR Too many bad commands, closing connection.\r\n"
INVALID = b"-ERR Invalid arguments.\r\n"


@pytest.mark.parametrize(
    "command", ["RETR x", "RETR", "DELE -1", "LIST x", "UIDL 1x", "TOP 1", "TOP x 1", "TOP 1 x"]
)
def test_repeated_invalid_arguments_close_the_session(board, command):
    send_mail(board.smtp_port, b"Subject: x\r\n\r\nx")
    board.set_config(max_bad_commands=3)
    w = pop3_login(board.pop3_port)
    w.send((command + "\r\n") * 3)
    # The same ending as for unknown commands: two answered, the third closes the session.
    assert w.rest_until_closed() == INVALID * 2 + TOO_MANY
    assert board.wait_log("too many bad commands")


@pytest.mark.parametrize(
    "command, reply",
    [("USER", INVALID), ("APOP bob", INVALID), ("PASS wonderland", b"-ERR No user name given.\r\n")],
)
def test_repeated_authorization_errors_close_the_session(board, command, reply):
    board.add_user("bob", "builder", apop="apop-secret")
    board.set_config(max_bad_commands=3)
    w = Wire(board.pop3_port)
    w.line()
    w.send((command + "\r\n") * 3)
    assert w.rest_until_closed() == reply * 2 + TOO_MANY


def test_invalid_arguments_are_counted_with_unknown_commands(board):
    board.set_config(max_bad_commands=10)
    w = pop3_login(board.pop3_port)
    w.send("RETR x\r\n" * 10)
    assert w.rest_until_closed() == INVALID * 9 + TOO_MANY
    board.set_config(max_bad_commands=3)
    w = pop3_login(board.pop3_port)  # the lock was released
    w.send("FOO\r\nRETR x\r\nBAR\r\n")
    assert w.rest_until_closed() == b"-ERR Unknown command.\r\n" + INVALID + TOO_MANY


def test_missing_or_deleted_messages_do_not_count(board):
    send_mail(board.smtp_port, b"Subject: x\r\n\r\nx")
    board.set_config(max_bad_commands=3)
    w = pop3_login(board.pop3_port)
    for command in ("RETR 2", "LIST 0", "UIDL 9", "TOP 2 1", "DELE 2"):
        assert w.cmd(command) == "-ERR No such message."
    assert w.cmd("DELE 1") == "+OK Marked to be deleted."
    for command in ("RETR 1", "DELE 1", "LIST 1"):
        assert w.cmd(command) == "-ERR Message is deleted."
    assert w.cmd("RETR x") == "-ERR Invalid arguments."
    assert w.cmd("RETR x") == "-ERR Invalid arguments."
    assert w.cmd("RETR x") == "-ERR Too many bad commands, closing connection."
    assert w.closed()
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")  # no QUIT: nothing was deleted


def test_login_failures_and_settings_do_not_count(board):
    board.set_config(max_bad_commands=3, auth_fail_delay_ms=0)
    w = Wire(board.pop3_port)
    w.line()
    for _ in range(3):
        assert w.cmd("USER alice") == "+OK Send PASS."
        assert w.cmd("PASS wrong") == "-ERR [AUTH] Authentication failed."
        assert w.cmd("AUTH CRAM-MD5") == "-ERR Unsupported authentication mechanism."
        assert w.cmd("AUTH PLAIN") == "+ "
        assert w.cmd("*") == "-ERR Authentication cancelled."
        assert w.cmd("AUTH PLAIN not*base64") == "-ERR Invalid base64 data or SASL message."
        assert w.cmd("APOP alice 0123456789abcdef0123456789abcdef") == "-ERR APOP is not enabled."
        assert w.cmd("STLS") == "-ERR STLS is not available."
    assert w.cmd("USER") == "-ERR Invalid arguments."
    assert w.cmd("USER") == "-ERR Invalid arguments."
    assert w.cmd("USER") == "-ERR Too many bad commands, closing connection."
    assert w.closed()


def test_binary_garbage_is_a_bad_command(board):
    w = Wire(board.pop3_port)
    w.line()
    w.send(b"\xff\xfe\x00\r\n")
    assert w.line() == "-ERR Command is not valid text."
    assert w.cmd("USER alice").startswith("+OK")


def auth_plain(user, password, authzid=""):
    return base64.b64encode("{}\0{}\0{}".format(authzid, user, password).encode()).decode()


def test_bare_auth_lists_mechanisms(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("AUTH") == "+OK"
    assert w.multiline() == b"PLAIN\r\nLOGIN\r\n"


def test_auth_plain_with_initial_response(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("AUTH PLAIN " + auth_plain("alice", "wonderland")).startswith("+OK Logged in")
    assert w.cmd("STAT") == "+OK 0 0"


def test_auth_plain_with_continuation(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("AUTH PLAIN") == "+ "
    assert w.cmd(auth_plain("alice", "wonderland")).startswith("+OK Logged in")


def test_auth_login(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("auth login") == "+ VXNlcm5hbWU6"
    assert w.cmd(base64.b64encode(b"alice").decode()) == "+ UGFzc3dvcmQ6"
    assert w.cmd(base64.b64encode(b"wonderland").decode()).startswith("+OK Logged in")


def test_auth_login_with_initial_user(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("AUTH LOGIN " + base64.b64encode(b"alice").decode()) == "+ UGFzc3dvcmQ6"
    assert w.cmd(base64.b64encode(b"wonderland").decode()).startswith("+OK Logged in")


def test_auth_failures(board):
    board.set_config(auth_fail_delay_ms=0)
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("AUTH PLAIN " + auth_plain("alice", "wrong")) == "-ERR [AUTH] Authentication failed."
    # An authorization identity other than the user itself is never allowed.
    assert w.cmd("AUTH PLAIN " + auth_plain("alice", "wonderland", "bob")) == "-ERR [AUTH] Authentication failed."
    assert w.cmd("AUTH PLAIN") == "+ "
    assert w.cmd("*") == "-ERR Authentication cancelled."
    assert w.cmd("AUTH LOGIN") == "+ VXNlcm5hbWU6"
    assert w.cmd("*") == "-ERR Authentication cancelled."
    assert w.cmd("AUTH PLAIN not*base64") == "-ERR Invalid base64 data or SASL message."
    assert w.cmd("AUTH PLAIN " + base64.b64encode(b"no separators").decode()) == "-ERR Invalid base64 data or SASL message."
    assert w.cmd("AUTH CRAM-MD5") == "-ERR Unsupported authentication mechanism."
    assert w.cmd("AUTH PLAIN " + auth_plain("alice", "wonderland")).startswith("+OK Logged in")


def test_apop(board):
    board.set_config(auth_fail_delay_ms=0)
    board.add_user("bob", "builder", apop="apop-secret")
    w = Wire(board.pop3_port)
    timestamp = re.search(r"<.*>", w.line()).group(0)
    wrong = hashlib.md5((timestamp + "wrong").encode()).hexdigest()
    assert w.cmd("APOP bob " + wrong) == "-ERR [AUTH] Authentication failed."
    # alice has no APOP secret: APOP never logs her in.
    digest = hashlib.md5((timestamp + "wonderland").encode()).hexdigest()
    assert w.cmd("APOP alice " + digest) == "-ERR [AUTH] Authentication failed."
    assert w.cmd("APOP bob") == "-ERR Invalid arguments."
    digest = hashlib.md5((timestamp + "apop-secret").encode()).hexdigest()
    assert w.cmd("APOP bob " + digest.upper()).startswith("+OK Logged in")


def test_apop_is_refused_when_no_user_has_an_apop_secret(board):
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("APOP alice 0123456789abcdef0123456789abcdef") == "-ERR APOP is not enabled."


def test_autologout_after_idle_time_deletes_nothing(board):
    board.set_config(pop3_idle_timeout=10)
    send_mail(board.smtp_port, b"Subject: stays\r\n\r\nx")
    w = pop3_login(board.pop3_port)
    assert w.cmd("DELE 1").startswith("+OK")
    start = time.monotonic()
    # RFC 1939 §3: the server closes the connection without a response.
    assert w.closed(timeout=20)
    assert 9 <= time.monotonic() - start <= 15
    assert w.buf == b""
    assert board.wait_log("idle time-out")
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")


def test_idle_timeout_default_is_ten_minutes(board):
    assert board.request("config.get", key="pop3_idle_timeout")["value"] == 600


def test_mailbox_unavailable_gives_sys_temp(make_board, tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "sd.img").write_bytes(b"\0" * 65536)  # no file system on this card
    board = make_board(data=data).start()
    board.add_user("alice", "wonderland")
    assert board.request("info")["storage"]["state"].startswith("error")
    w = Wire(board.pop3_port)
    w.line()
    w.cmd("USER alice")
    assert w.cmd("PASS wonderland") == "-ERR [SYS/TEMP] Mail storage is not available, try again later."
