"""SMTP (RFC 5321, 1870, 2920, 3463, 4954, 6152) against the firmware on the emulated board."""

import base64
import random
import re
import socket
import time

import pytest

from wire import Wire, pop3_login, send_mail, smtp_session, strip_trace, unstuff

EHLO_REPLY = [
    "250-pocketpost",
    "250-PIPELINING",
    "250-SIZE 10240000",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-AUTH PLAIN LOGIN",
    "250 HELP",
]
# RFC 2034: after EHLO every 2xx/4xx/5xx reply carries an enhanced status code.
ENHANCED = re.compile(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3} ")


def enhanced(reply):
    assert ENHANCED.match(reply), reply
    return reply


def fetch_all(board, user="alice", password="wonderland"):
    """Every message in the user's mailbox, unstuffed, trace fields removed."""
    w = pop3_login(board.pop3_port, user, password)
    count = int(w.cmd("STAT").split()[1])
    messages = []
    for n in range(1, count + 1):
        assert w.cmd("RETR {}".format(n)).startswith("+OK")
        messages.append(unstuff(w.multiline()))
    w.cmd("QUIT")
    w.close()
    return messages


def test_greeting_and_ehlo(board):
    w = Wire(board.smtp_port)
    assert w.line() == "220 pocketpost ESMTP pocketpost"
    w.send("EHLO client.example\r\n")
    assert w.smtp_reply() == EHLO_REPLY


def test_ehlo_lists_configured_size(board):
    board.set_config(max_message_size=4096)
    w = Wire(board.smtp_port)
    w.line()
    w.send("EHLO client.example\r\n")
    assert "250-SIZE 4096" in w.smtp_reply()


def test_helo(board):
    w = Wire(board.smtp_port)
    w.line()
    assert w.cmd("HELO client.example") == "250 pocketpost"
    assert w.cmd("HELO") == "501 5.5.4 Syntax: HELO hostname"
    assert w.cmd("EHLO") == "501 5.5.4 Syntax: EHLO hostname"


def test_mail_needs_helo_first(board):
    w = Wire(board.smtp_port)
    w.line()
    assert w.cmd("MAIL FROM:<bob@example.org>") == "503 5.5.1 Error: send HELO/EHLO first"


def test_command_sequence_errors(board):
    w = smtp_session(board.smtp_port)
    assert enhanced(w.cmd("RCPT TO:<alice@pocketpost.local>")).startswith("503 5.5.1")
    assert enhanced(w.cmd("DATA")).startswith("503 5.5.1")
    assert enhanced(w.cmd("MAIL FROM:<bob@example.org>")) == "250 2.1.0 Ok"
    assert enhanced(w.cmd("MAIL FROM:<bob@example.org>")) == "503 5.5.1 Error: nested MAIL command"
    assert enhanced(w.cmd("DATA")) == "554 5.5.1 Error: no valid recipients"
    assert enhanced(w.cmd("RSET")) == "250 2.0.0 Ok"
    assert enhanced(w.cmd("RCPT TO:<alice@pocketpost.local>")).startswith("503 5.5.1")


def test_full_transaction_stores_the_message_with_trace_fields(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"
    assert w.cmd("RCPT TO:<Alice@PocketPost.Local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    w.send(b"Subject: hello\r\n\r\nHi Alice.\r\n.\r\n")
    reply = w.line()
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as [0-9A-F]{8}", reply), reply
    queue_id = reply.split()[-1]
    assert w.cmd("QUIT") == "221 2.0.0 Bye"
    assert w.closed()
    [message] = fetch_all(board)
    lines = message.split(b"\r\n")
    assert lines[0] == b"Return-Path: <bob@example.org>"
    assert lines[1] == b"Received: from client.example (127.0.0.1 [127.0.0.1])"
    assert lines[2] == "\tby pocketpost (pocketpost) with ESMTP id {}".format(queue_id).encode()
    assert lines[3] == b"\tfor <Alice@PocketPost.Local>;"
    assert re.fullmatch(rb"\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000", lines[4])
    assert b"\r\n".join(lines[5:]) == b"Subject: hello\r\n\r\nHi Alice.\r\n"
    assert board.wait_log("delivered {} from <bob@example.org> to alice".format(queue_id))


def test_null_sender_and_helo_trace(board):
    w = Wire(board.smtp_port)
    w.line()
    assert w.cmd("HELO old.example") == "250 pocketpost"
    assert w.cmd("MAIL FROM:<>") == "250 2.1.0 Ok"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n")
    assert w.line().startswith("250 2.0.0")
    [message] = fetch_all(board)
    assert message.startswith(b"Return-Path: <>\r\nReceived: from old.example (127.0.0.1 [127.0.0.1])\r\n\tby pocketpost (pocketpost) with SMTP id ")


def test_unknown_user_and_relay_are_refused(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<nobody@pocketpost.local>") == "550 5.1.1 <nobody@pocketpost.local>: Recipient address rejected: User unknown"
    assert w.cmd("RCPT TO:<alice@example.com>") == "550 5.7.1 <alice@example.com>: Relay access denied"
    assert w.cmd("RCPT TO:<alice@pocketpost.local.example.com>").startswith("550 5.7.1")
    assert w.cmd("RCPT TO:<alice>").startswith("501 5.1.3")  # only Postmaster may come bare
    assert board.wait_log("relay denied: <alice@example.com>")  # (the console's lines come through a thread)


def test_relay_is_refused_after_auth_too(board):
    w = smtp_session(board.smtp_port)
    token = base64.b64encode(b"\0alice\0wonderland").decode()
    assert w.cmd("AUTH PLAIN " + token) == "235 2.7.0 Authentication successful"
    assert w.cmd("MAIL FROM:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("RCPT TO:<friend@example.com>").startswith("550 5.7.1")


def test_postmaster_is_always_accepted_and_goes_to_the_configured_user(board):
    board.set_config(postmaster="alice")
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<Postmaster>") == "250 2.1.5 Ok"
    assert w.cmd("RCPT TO:<POSTMASTER@pocketpost.local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: to postmaster\r\n\r\nx\r\n.\r\n")
    assert w.line().startswith("250 2.0.0")
    messages = fetch_all(board)
    assert len(messages) == 1  # one copy per mailbox
    assert strip_trace(messages[0]) == b"Subject: to postmaster\r\n\r\nx\r\n"


def test_quoted_local_part_is_the_same_address(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd('RCPT TO:<"alice"@pocketpost.local>') == "250 2.1.5 Ok"
    assert w.cmd('RCPT TO:<"al\\ice"@pocketpost.local>') == "250 2.1.5 Ok"
    assert w.cmd('RCPT TO:<"al ice"@pocketpost.local>').startswith("550 5.1.1")


def test_postmaster_mail_for_a_missing_user_is_kept_and_logged(board):
    send_mail(board.smtp_port, b"Subject: pm\r\n\r\nx", rcpts=("postmaster@pocketpost.local",))
    assert board.wait_log("WARN smtp: postmaster mail is kept for postmaster, which is not a user")
    board.add_user("postmaster", "pm-password")
    assert len(fetch_all(board, "postmaster", "pm-password")) == 1


def test_one_copy_per_recipient_mailbox(board):
    board.add_user("bob", "builder")
    send_mail(
        board.smtp_port,
        b"Subject: both\r\n\r\nhello",
        rcpts=("alice@pocketpost.local", "bob@pocketpost.local", "ALICE@pocketpost.local"),
    )
    [a] = fetch_all(board)
    [b] = fetch_all(board, "bob", "builder")
    assert strip_trace(a) == strip_trace(b) == b"Subject: both\r\n\r\nhello\r\n"
    # With several recipients the trace has no "for" clause (RFC 5321 §4.4: privacy).
    assert b"\tfor <" not in a


def test_several_local_domains(board):
    board.set_config(domains="pocketpost.local, example.test")
    send_mail(board.smtp_port, b"Subject: other domain\r\n\r\nx", rcpts=("alice@example.test",))
    assert len(fetch_all(board)) == 1


def test_size_parameter(board):
    board.set_config(max_message_size=4096)
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org> SIZE=4097") == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert w.cmd("MAIL FROM:<bob@example.org> SIZE=4096 BODY=8BITMIME") == "250 2.1.0 Ok"


def test_message_over_the_size_limit_is_read_to_the_end_and_refused_once(board):
    board.set_config(max_message_size=4096)
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 200 + b".\r\nNOOP\r\n")
    assert w.line() == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert w.line() == "250 2.0.0 Ok"  # the session is still in sync
    assert fetch_all(board) == []
    # A message at the limit (after unstuffing) is accepted.
    body = b"Subject: fits\r\n\r\n" + b"y" * (4096 - 17 - 2)
    send_mail(board.smtp_port, body)
    [message] = fetch_all(board)
    assert strip_trace(message) == body + b"\r\n"


def test_mail_parameters(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org> BODY=7BIT").startswith("250 2.1.0")
    assert w.cmd("RSET").startswith("250")
    assert w.cmd("MAIL FROM:<bob@example.org> BODY=BINARYMIME") == "555 5.5.4 Unsupported option: BODY=BINARYMIME"
    assert w.cmd("MAIL FROM:<bob@example.org> SMTPUTF8") == "555 5.5.4 Unsupported option: SMTPUTF8"
    assert w.cmd("MAIL FROM:<bob@example.org> SIZE=abc") == "501 5.5.4 Syntax error in parameters: SIZE=number"
    assert w.cmd("MAIL FROM:<bob@example.org> AUTH=<>").startswith("250 2.1.0")


def test_parameters_need_ehlo(board):
    w = Wire(board.smtp_port)
    w.line()
    w.cmd("HELO client.example")
    assert w.cmd("MAIL FROM:<bob@example.org> SIZE=10") == "555 5.5.4 Error: parameters need EHLO"


def test_address_syntax_and_limits(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:bob@example.org") == "501 5.1.7 Bad sender address syntax"
    assert w.cmd("MAIL FROM:<bob@example.org") == "501 5.1.7 Bad sender address syntax"
    assert w.cmd("MAIL TO:<bob@example.org>") == "501 5.5.4 Syntax: MAIL FROM:<address>"
    assert w.cmd("MAIL FROM:<{}@example.org>".format("b" * 65)) == "501 5.1.7 Bad sender address syntax"
    assert w.cmd("MAIL FROM: <bob@example.org>") == "250 2.1.0 Ok"  # a space after the colon is common
    # Names that could leave the mailbox folder are not users; oversized parts are syntax errors
    # (RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets).
    for address, reply in (
        ("../../etc@pocketpost.local", "550 5.1.1"),
        ("a/b@pocketpost.local", "550 5.1.1"),
        (".hidden@pocketpost.local", "550 5.1.1"),
        ("a" * 65 + "@pocketpost.local", "501 5.1.3"),
        ("alice@" + "d" * 64 + ".local", "501 5.1.3"),
        ("alice@" + ".".join(["abcdefgh"] * 30), "501 5.1.3"),
        ("a lice@pocketpost.local", "501 5.1.3"),
    ):
        assert w.cmd("RCPT TO:<{}>".format(address)).startswith(reply), address
    assert w.cmd("RCPT TO:<@relay.example:alice@pocketpost.local>") == "250 2.1.5 Ok"  # source route ignored
    assert w.cmd("RCPT TO:<alice@pocketpost.local> NOTIFY=NEVER") == "555 5.5.4 Unsupported option: NOTIFY=NEVER"


def test_control_characters_in_commands_are_refused(board):
    w = smtp_session(board.smtp_port)
    w.send(b"MAIL FROM:<bob@example.org>\rRCPT TO:<x@y>\r\n")
    assert w.line() == "500 5.5.2 Error: command contains invalid characters"
    w.send(b"NOOP\x00\r\n")
    assert w.line() == "500 5.5.2 Error: command contains invalid characters"
    assert w.cmd("NOOP") == "250 2.0.0 Ok"


def test_other_commands(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("NOOP") == "250 2.0.0 Ok"
    assert w.cmd("VRFY alice") == "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
    assert w.cmd("VRFY") == "501 5.5.4 Syntax: VRFY address"
    assert w.cmd("EXPN staff") == "502 5.5.1 Error: EXPN is not supported"
    assert enhanced(w.cmd("HELP")).startswith("214 2.0.0 ")
    assert w.cmd("BOGUS") == "500 5.5.2 Error: command not recognized"
    assert w.cmd("rset") == "250 2.0.0 Ok"


def test_too_many_bad_commands_close_the_session(board):
    board.set_config(max_bad_commands=3)
    w = smtp_session(board.smtp_port)
    assert w.cmd("FOO").startswith("500")
    assert w.cmd("BAR").startswith("500")
    assert w.cmd("BAZ") == "421 4.7.0 pocketpost Error: too many errors"
    assert w.closed()


TOO_MANY_ERRORS = b"421 4.7.0 pocketpost Error: too many errors\r\n"


@pytest.mark.parametrize(
    "command, reply",
    [
        ("MAIL FROM:bad", b"501 5.1.7 Bad sender address syntax\r\n"),
        ("MAIL TO:<bob@example.org>", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        ("MAIL FROM:<bob@example.org> SIZE=big", b"501 5.5.4 Syntax error in parameters: SIZE=number\r\n"),
        ("MAIL FROM:<bob@example.org> SMTPUTF8", b"555 5.5.4 Unsupported option: SMTPUTF8\r\n"),
        ("RCPT TO:<alice@pocketpost.local>", b"503 5.5.1 Error: need MAIL command\r\n"),
        ("DATA", b"503 5.5.1 Error: need MAIL command\r\n"),
        ("DATA now", b"501 5.5.4 Syntax: DATA\r\n"),
        ("EHLO", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        ("HELO", b"501 5.5.4 Syntax: HELO hostname\r\n"),
        ("VRFY", b"501 5.5.4 Syntax: VRFY address\r\n"),
        ("STARTTLS now", b"501 5.5.4 Syntax: STARTTLS\r\n"),
    ],
)
def test_repeated_syntax_and_sequence_errors_close_the_session(board, command, reply):
    board.set_config(max_bad_commands=3)
    w = smtp_session(board.smtp_port)
    w.send((command + "\r\n") * 3)
    # The same ending as for unknown commands: two answered, the third closes the session.
    assert w.rest_until_closed() == reply * 2 + TOO_MANY_ERRORS


def test_syntax_errors_are_counted_with_unknown_commands(board):
    board.set_config(max_bad_commands=10)
    w = smtp_session(board.smtp_port)
    w.send("MAIL FROM:bad\r\n" * 10)
    assert w.rest_until_closed() == b"501 5.1.7 Bad sender address syntax\r\n" * 9 + TOO_MANY_ERRORS
    assert board.wait_log("too many bad commands")
    board.set_config(max_bad_commands=3)
    w = smtp_session(board.smtp_port)
    w.send("FOO\r\nMAIL FROM:bad\r\nBAR\r\n")
    assert w.rest_until_closed() == (
        b"500 5.5.2 Error: command not recognized\r\n501 5.1.7 Bad sender address syntax\r\n" + TOO_MANY_ERRORS
    )


def test_sequence_errors_count(board):
    board.set_config(max_bad_commands=3)
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"
    assert w.cmd("MAIL FROM:<bob@example.org>") == "503 5.5.1 Error: nested MAIL command"
    assert w.cmd("AUTH PLAIN") == "503 5.5.1 Error: MAIL transaction in progress"
    assert w.cmd("MAIL FROM:<bob@example.org>") == "421 4.7.0 pocketpost Error: too many errors"
    assert w.closed()
    w = Wire(board.smtp_port)
    assert w.line().startswith("220 ")
    w.send("MAIL FROM:<bob@example.org>\r\nSTARTTLS\r\nAUTH PLAIN\r\nHELO\r\n")
    assert w.rest_until_closed() == (
        b"503 5.5.1 Error: send HELO/EHLO first\r\n"
        b"502 5.5.1 Error: STARTTLS is not available\r\n"  # no certificate: not counted
        b"503 5.5.1 Error: send EHLO first\r\n" + TOO_MANY_ERRORS
    )


def test_unknown_recipients_and_refused_relaying_do_not_count(board):
    board.set_config(max_bad_commands=3)
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"
    for _ in range(5):
        assert w.cmd("RCPT TO:<nobody@pocketpost.local>") == "550 5.1.1 <nobody@pocketpost.local>: Recipient address rejected: User unknown"
        assert w.cmd("RCPT TO:<alice@example.com>") == "550 5.7.1 <alice@example.com>: Relay access denied"
    assert w.cmd("DATA") == "554 5.5.1 Error: no valid recipients"
    assert w.cmd("DATA") == "554 5.5.1 Error: no valid recipients"
    assert w.cmd("RCPT FROM:<alice@pocketpost.local>") == "501 5.5.4 Syntax: RCPT TO:<address>"
    assert w.cmd("RCPT TO:<bad>") == "501 5.1.3 Bad recipient address syntax"
    assert w.cmd("RCPT TO:<alice@pocketpost.local> NOTIFY=NEVER") == "421 4.7.0 pocketpost Error: too many errors"
    assert w.closed()


def test_refusals_that_are_not_the_clients_fault_do_not_count(board):
    board.set_config(max_bad_commands=3, max_message_size=4096, auth_fail_delay_ms=0)
    w = smtp_session(board.smtp_port)
    for _ in range(3):
        assert w.cmd("EXPN staff") == "502 5.5.1 Error: EXPN is not supported"
        assert w.cmd("STARTTLS") == "502 5.5.1 Error: STARTTLS is not available"
        assert w.cmd("MAIL FROM:<bob@example.org> SIZE=5000") == "552 5.3.4 Message size exceeds fixed maximum message size"
        assert w.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"
        assert w.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
        assert w.cmd("*") == "501 5.7.0 Authentication aborted"
        assert w.cmd("AUTH PLAIN ===") == "501 5.5.2 Cannot decode response"
    for _ in range(2):
        assert w.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0bad").decode()) == "535 5.7.8 Authentication credentials invalid"
    assert w.cmd("NOOP") == "250 2.0.0 Ok"
    assert w.cmd("VRFY") == "501 5.5.4 Syntax: VRFY address"
    assert w.cmd("VRFY") == "501 5.5.4 Syntax: VRFY address"
    assert w.cmd("VRFY") == "421 4.7.0 pocketpost Error: too many errors"
    assert w.closed()


def test_pipelined_commands_after_a_refused_mail_do_not_count(board):
    # RFC 2920: the client sends RCPT and DATA before it sees that MAIL was refused.
    board.set_config(max_bad_commands=3, max_message_size=4096)
    w = smtp_session(board.smtp_port)
    w.send("MAIL FROM:<bob@example.org> SIZE=5000\r\n" + "RCPT TO:<alice@pocketpost.local>\r\n" * 5 + "DATA\r\n")
    assert w.line() == "552 5.3.4 Message size exceeds fixed maximum message size"
    for _ in range(6):
        assert w.line() == "503 5.5.1 Error: need MAIL command"
    # After RSET a RCPT without MAIL is the client's error again.
    assert w.cmd("RSET") == "250 2.0.0 Ok"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "503 5.5.1 Error: need MAIL command"
    assert w.cmd("DATA") == "503 5.5.1 Error: need MAIL command"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "421 4.7.0 pocketpost Error: too many errors"
    assert w.closed()


def test_overlong_command_line(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("NOOP " + "x" * 2000) == "500 5.5.2 Error: line too long"
    assert w.cmd("NOOP") == "250 2.0.0 Ok"


def test_pipelined_transaction_is_answered_in_order(board):
    board.add_user("bob", "builder")
    w = Wire(board.smtp_port)
    w.line()
    w.send(
        "EHLO client.example\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@pocketpost.local>\r\n"
        "RCPT TO:<nobody@pocketpost.local>\r\nRCPT TO:<bob@pocketpost.local>\r\nDATA\r\n"
    )
    assert w.smtp_reply() == EHLO_REPLY
    assert w.line() == "250 2.1.0 Ok"
    assert w.line() == "250 2.1.5 Ok"
    assert w.line().startswith("550 5.1.1")
    assert w.line() == "250 2.1.5 Ok"
    assert w.line().startswith("354")
    w.send("Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@pocketpost.local>\r\nDATA\r\n")
    assert w.line().startswith("250 2.0.0 Ok: queued as")
    assert w.line() == "250 2.1.0 Ok"
    assert w.line() == "250 2.1.5 Ok"
    assert w.line().startswith("354")
    w.send("Subject: second\r\n\r\nbody 2\r\n.\r\nQUIT\r\n")
    assert w.line().startswith("250 2.0.0 Ok: queued as")
    assert w.line() == "221 2.0.0 Bye"
    assert len(fetch_all(board)) == 2
    assert len(fetch_all(board, "bob", "builder")) == 1


def test_max_recipients(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    w.send("".join("RCPT TO:<alice@pocketpost.local>\r\n" for _ in range(101)))
    for _ in range(100):
        assert w.line() == "250 2.1.5 Ok"
    assert w.line() == "452 4.5.3 Error: too many recipients"
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
    assert w.line().startswith("250 2.0.0")
    assert len(fetch_all(board)) == 1


# ---- DATA transparency, line ends and smuggling


def deliver_raw(board, data, chunk=None):
    """Sends raw DATA content (which must end with the end-of-data sequence) and returns the
    reply to it, sending `chunk` bytes per write with a pause so the server reads them apart."""
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if chunk is None:
        w.send(data)
    else:
        for i in range(0, len(data), chunk):
            w.send(data[i : i + chunk])
            time.sleep(0.002)
    reply = w.line()
    w.send("QUIT\r\n")
    return reply, w


def test_dot_unstuffing_across_read_boundaries(board):
    data = b"Subject: split\r\n\r\n..a\r\n..\r\n...\r\nb.\r\n..c\r\n.\r\n"
    reply, _ = deliver_raw(board, data, chunk=1)
    assert reply.startswith("250 2.0.0")
    [message] = fetch_all(board)
    assert strip_trace(message) == b"Subject: split\r\n\r\n.a\r\n.\r\n..\r\nb.\r\n.c\r\n"


def reference_unstuff(data):
    """What the firmware must store for DATA content `data` (RFC 5321 §4.5.2 plus our policy:
    bare CR and bare LF become CRLF; only CRLF "." CRLF ends the data)."""
    end = data.index(b"\r\n.\r\n") if not data.startswith(b".\r\n") else -2
    content = data[: end + 2]
    out = []
    for line in re_split_crlf(content):
        if line.startswith(b"."):
            line = line[1:]
        out.append(line.replace(b"\r", b"\n").replace(b"\n", b"\r\n"))
    return b"".join(piece + b"\r\n" for piece in out)


def re_split_crlf(content):
    lines = content.split(b"\r\n")
    return lines[:-1]


@pytest.mark.parametrize("seed", range(4))
def test_random_content_in_random_pieces_round_trips(board, seed):
    rng = random.Random(seed)
    alphabet = [b".", b"\r\n", b"\r", b"\n", b"a", b"xyz", b"..", b"\r\n."]
    pieces = [rng.choice(alphabet) for _ in range(3000)]
    content = b"Subject: fuzz\r\n\r\n" + b"".join(pieces)
    # Dot-stuff the way a client must (a "." after CRLF gets another), then end the data.
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    data = stuffed + b"\r\n.\r\n"
    expected = reference_unstuff(data)
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<bob@example.org>")
    w.cmd("RCPT TO:<alice@pocketpost.local>")
    assert w.cmd("DATA").startswith("354")
    w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 500, 1023, 1024, 1025, 4000))
        w.send(data[i : i + n])
        i += n
        if rng.random() < 0.2:
            time.sleep(0.001)
    assert w.line().startswith("250 2.0.0")
    [message] = fetch_all(board)
    assert strip_trace(message) == expected


@pytest.mark.parametrize(
    "smuggled_end",
    [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"],
)
def test_smtp_smuggling_sequences_do_not_end_data(board, smuggled_end):
    board.add_user("victim", "secret")
    data = (
        b"Subject: first\r\n\r\nbody"
        + smuggled_end
        + b"MAIL FROM:<admin@pocketpost.local>\r\nRCPT TO:<victim@pocketpost.local>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    reply, w = deliver_raw(board, data)
    assert reply.startswith("250 2.0.0")
    assert w.line() == "221 2.0.0 Bye"  # nothing after the message was taken as a command
    [message] = fetch_all(board)
    assert b"Subject: smuggled" in message  # it is content of the one message
    assert fetch_all(board, "victim", "secret") == []


def test_bare_line_ends_are_stored_as_crlf_and_long_lines_are_kept(board):
    long_line = b"L" * 5000
    data = b"Subject: ends\r\n\r\nbare lf\nbare cr\rnormal\r\n" + long_line + b"\r\n.\r\n"
    reply, _ = deliver_raw(board, data)
    assert reply.startswith("250")
    [message] = fetch_all(board)
    assert strip_trace(message) == b"Subject: ends\r\n\r\nbare lf\r\nbare cr\r\nnormal\r\n" + long_line + b"\r\n"


def test_8bit_content_round_trips(board):
    body = "Subject: 8bit\r\n\r\nGr\u00fc\u00dfe, \u00e7a va? \u2603".encode() + bytes(range(0x80, 0x100))
    body = body.replace(b"\r", b"").replace(b"\n", b"")
    data = b"Subject: 8bit\r\n\r\n" + body + b"\r\n.\r\n"
    reply, _ = deliver_raw(board, data)
    assert reply.startswith("250")
    [message] = fetch_all(board)
    assert strip_trace(message) == b"Subject: 8bit\r\n\r\n" + body + b"\r\n"


# ---- AUTH


def test_auth_plain_and_login(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("AUTH PLAIN") == "334 "
    assert w.cmd(base64.b64encode(b"\0alice\0wonderland").decode()) == "235 2.7.0 Authentication successful"
    assert w.cmd("AUTH PLAIN") == "503 5.5.1 Error: already authenticated"
    assert w.cmd("MAIL FROM:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: authed\r\n\r\nx\r\n.\r\n")
    assert w.line().startswith("250")
    [message] = fetch_all(board)
    assert b"with ESMTPA id" in message
    w = smtp_session(board.smtp_port)
    assert w.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert w.cmd(base64.b64encode(b"alice").decode()) == "334 UGFzc3dvcmQ6"
    assert w.cmd(base64.b64encode(b"wonderland").decode()) == "235 2.7.0 Authentication successful"


def test_auth_errors(board):
    board.set_config(auth_fail_delay_ms=0)
    w = Wire(board.smtp_port)
    w.line()
    w.cmd("HELO client.example")
    assert w.cmd("AUTH PLAIN") == "503 5.5.1 Error: send EHLO first"
    w = smtp_session(board.smtp_port)
    assert w.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"
    assert w.cmd("AUTH") == "504 5.5.4 Unrecognized authentication type"
    assert w.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0bad").decode()) == "535 5.7.8 Authentication credentials invalid"
    assert w.cmd("AUTH PLAIN " + base64.b64encode(b"bob\0alice\0wonderland").decode()) == "535 5.7.8 Authentication credentials invalid"
    assert w.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert w.cmd("*") == "501 5.7.0 Authentication aborted"
    assert w.cmd("AUTH PLAIN ===") == "501 5.5.2 Cannot decode response"
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("AUTH PLAIN") == "503 5.5.1 Error: MAIL transaction in progress"


def test_login_throttling_locks_out_an_address(board):
    board.set_config(auth_fail_delay_ms=0, auth_max_failures=3)
    w = smtp_session(board.smtp_port)
    bad = "AUTH PLAIN " + base64.b64encode(b"\0alice\0bad").decode()
    for _ in range(3):
        assert w.cmd(bad) == "535 5.7.8 Authentication credentials invalid"
    good = "AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland").decode()
    assert w.cmd(good) == "454 4.7.0 Temporary authentication failure"
    p = Wire(board.pop3_port)
    p.line()
    p.cmd("USER alice")
    assert p.cmd("PASS wonderland") == "-ERR [SYS/TEMP] Too many failed logins, try again later."


def test_timeout_closes_an_idle_session(board):
    board.set_config(smtp_timeout=10)
    w = smtp_session(board.smtp_port)
    start = time.monotonic()
    assert w.line() == "421 4.4.2 pocketpost Error: timeout exceeded"
    assert 9 <= time.monotonic() - start <= 15
    assert w.closed()


def test_timeout_during_data_stores_nothing(board):
    board.set_config(smtp_timeout=10)
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<bob@example.org>")
    w.cmd("RCPT TO:<alice@pocketpost.local>")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: never finished\r\n\r\nhalf")
    assert w.line() == "421 4.4.2 pocketpost Error: timeout exceeded"
    assert fetch_all(board) == []


def test_dropped_connection_during_data_stores_nothing(board):
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<bob@example.org>")
    w.cmd("RCPT TO:<alice@pocketpost.local>")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: cut\r\n\r\n" + b"x" * 10000)
    w.close()
    time.sleep(0.3)
    assert fetch_all(board) == []
    info = board.request("mailbox.stats", name="alice")
    assert info["mailboxes"][0]["messages"] == 0
