"""Relaying through a smarthost (issue 12): who may relay, the queue on the card, the SMTP
client with verified TLS and AUTH, retries, bounces, and the console's queue requests, against
aiosmtpd on loopback."""

import email
import email.policy
import smtplib
import time

import pytest

from pocketpost_host import relay as host_relay
from pocketpost_host.errors import BoardError

import smarthost
from emulated_board import free_port, wait_until
from smarthost import PASSWORD, USER, Smarthost
from wire import smtp_session

# aiosmtpd warns (in its own thread, for every connection) of AUTH without STARTTLS: the
# smarthost here is inside implicit TLS, or a plaintext one that must never see AUTH.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

MESSAGE = (
    b"From: Alice <alice@pocketpost.local>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: relayed\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"last line\r\n"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relaycerts")
    good = smarthost.make_certificate(folder, "localhost")
    other = smarthost.make_certificate(folder, "other.example")
    return {"good": good, "other": other}


def expect_log(board, text, timeout=10):
    assert board.wait_log(text, timeout), "\n".join(board.lines[-40:])


def relay_board(make_board, certs, port, security="starttls", ca="good", **settings):
    board = make_board().start()
    board.add_user("alice", "wonderland")
    board.add_user("postmaster", "postpass")
    values = dict(relay_host="localhost", relay_port=port, relay_security=security, relay_user=USER,
                  relay_password=PASSWORD, relay_sender="me@provider.example", relay_networks="127.0.0.0/8",
                  relay_time_scale=1, relay_timeout=10)
    values.update(settings)
    board.set_config(**values)
    if ca:
        if host_relay.install_ca(board.console, certs[ca][2])["applies"] == "reboot":
            board.restart()  # no block for the TLS context now: it is made at boot
    return board


def send(board, rcpts, message=MESSAGE, sender="alice@pocketpost.local"):
    """sendmail; sent again (3 tries, as a mail client would) after the board's temporary
    "451 4.3.0 Not enough memory" (a pass of the relay may hold the heap: these tests are about
    the relay, tests/test_memory.py about shortages)."""
    for attempt in range(3):
        try:
            with smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=20) as s:
                return s.sendmail(sender, rcpts, message)
        except smtplib.SMTPDataError as e:
            if e.smtp_code != 451 or b"Not enough memory" not in e.smtp_error or attempt == 2:
                raise
            time.sleep(0.5)


def test_relay_over_starttls_arrives_byte_exact_with_masqueraded_sender(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1], "starttls") as host:
        board = relay_board(make_board, certs, port)
        assert send(board, ["bob@example.org"]) == {}
        assert wait_until(lambda: host.handler.messages), "\n".join(board.lines[-40:])
        mail_from, rcpts, content = host.handler.messages[0]
        assert mail_from == "me@provider.example"
        assert rcpts == ["bob@example.org"]
        # The message as sent, after the board's trace field (no Return-Path goes on).
        assert content.startswith(b"Received: from ")
        assert content.endswith(MESSAGE)
        assert not content.startswith(b"Return-Path")
        # MAIL came inside TLS, after AUTH.
        assert host.handler.commands[0] == ("AUTH", "PLAIN")
        assert host.handler.commands[1][0] == "MAIL" and host.handler.commands[1][2:] == (True, True)
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])
        expect_log(board, "done: bob@example.org sent")


def fetch(board, user="alice", password="wonderland"):
    """Every message in the user's mailbox (bytes), via POP3; [] while the board answers with a
    temporary error (a relay pass holds the heap)."""
    import poplib

    try:
        p = board.pop3()
    except poplib.error_proto as e:  # the greeting: every client place taken (the relay borrows one)
        if b"[SYS/TEMP]" not in e.args[0]:
            raise
        return []
    try:
        p.user(user)
        p.pass_(password)
        out = [b"\r\n".join(p.retr(n + 1)[1]) + b"\r\n" for n in range(len(p.list()[1]))]
    except poplib.error_proto as e:
        if b"[SYS/TEMP]" not in e.args[0]:
            raise
        p.close()
        return []
    try:
        p.quit()
    except poplib.error_proto as e:  # a temporary error at QUIT: nothing was to be deleted
        if b"[SYS/TEMP]" not in e.args[0]:
            raise
        p.close()
    return out


def dsn(raw):
    """The delivery-status report in `raw`: (message, [per-recipient field dicts])."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].get_payload()  # the per-message block, then one block per recipient
    blocks = [dict(block.items()) for block in status]
    assert "dns;" in blocks[0]["Reporting-MTA"]
    return message, blocks[1:]


def test_relay_over_implicit_tls(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1], "tls") as host:
        board = relay_board(make_board, certs, port, security="tls")
        assert send(board, ["bob@example.org", "carol@example.net"]) == {}
        assert wait_until(lambda: host.handler.messages), "\n".join(board.lines[-30:])
        mail_from, rcpts, content = host.handler.messages[0]
        assert (mail_from, rcpts) == ("me@provider.example", ["bob@example.org", "carol@example.net"])
        assert content.endswith(MESSAGE)
        assert wait_until(lambda: board.request("info")["queue"]["messages"] == 0)


def test_a_temporary_failure_is_retried_on_the_schedule(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        host.handler.rcpt_replies["bob@example.org"] = ["451 4.3.0 Try again later", "250 OK"]
        board = relay_board(make_board, certs, port, relay_time_scale=10)  # 300 s of schedule: 3 s
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "deferred (1 tries): RCPT TO:<bob@example.org>: 451 4.3.0 Try again later")
        queued = board.request("queue.list")["messages"]
        assert len(queued) == 1 and queued[0]["tries"] == 1 and 0 < queued[0]["next_s"] <= 3
        assert "451 4.3.0" in queued[0]["error"]
        assert not host.handler.messages
        assert wait_until(lambda: host.handler.messages, timeout=20)
        assert len(host.handler.messages) == 1
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_a_permanent_failure_bounces_to_a_local_sender(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        host.handler.rcpt_replies["nobody@example.org"] = ["550 5.1.1 <nobody@example.org>: no such user"]
        board = relay_board(make_board, certs, port)
        assert send(board, ["nobody@example.org"]) == {}
        mailbox = wait_until(lambda: fetch(board))
        message, recipients = dsn(mailbox[0])
        assert message["To"] == "alice@pocketpost.local"
        assert message["Auto-Submitted"] == "auto-replied"
        assert len(recipients) == 1
        r = recipients[0]
        assert r["Final-Recipient"] == "rfc822; nobody@example.org"
        assert r["Action"] == "failed"
        assert r["Status"] == "5.1.1"
        assert "550 5.1.1" in r["Diagnostic-Code"]
        headers = list(message.iter_parts())[2].get_payload()
        assert "Subject: relayed" in str(headers)
        assert not host.handler.messages
        assert board.request("queue.list")["messages"] == []


def test_mixed_recipients(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.rcpt_replies["bad@example.org"] = ["550 5.1.1 unknown"]
        h.rcpt_replies["later@example.org"] = ["452 4.2.2 mailbox full", "250 OK"]
        board = relay_board(make_board, certs, port)
        rcpts = ["good@example.org", "bad@example.org", "later@example.org", "alice@pocketpost.local"]
        assert send(board, rcpts) == {}
        assert wait_until(lambda: len(h.messages) == 2)
        assert h.messages[0][1] == ["good@example.org"]
        assert h.messages[1][1] == ["later@example.org"]  # the retry sends only to the deferred one
        mailbox = wait_until(lambda: (lambda m: len(m) == 2 and m)(fetch(board)))
        assert mailbox
        local, bounce = mailbox
        assert local.endswith(MESSAGE)
        _, recipients = dsn(bounce)
        assert [r["Final-Recipient"] for r in recipients] == ["rfc822; bad@example.org"]
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_a_remote_sender_gets_its_bounce_through_the_smarthost(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.rcpt_replies["nobody@example.org"] = ["550 5.1.1 no such user"]
        board = relay_board(make_board, certs, port)
        assert send(board, ["nobody@example.org"], sender="bob@remote.example") == {}
        assert wait_until(lambda: h.messages)
        mail_from, rcpts, content = h.messages[0]
        assert mail_from == "<>" and rcpts == ["bob@remote.example"]  # the null sender is not masqueraded
        dsn(content)


def test_an_undeliverable_bounce_goes_to_the_postmaster(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.rcpt_replies["nobody@example.org"] = ["550 5.1.1 no such user"]
        h.rcpt_replies["bob@remote.example"] = ["550 5.1.1 gone too"]
        board = relay_board(make_board, certs, port)
        assert send(board, ["nobody@example.org"], sender="bob@remote.example") == {}
        mailbox = wait_until(lambda: fetch(board, "postmaster", "postpass"), timeout=30)  # two passes, two bounces
        assert mailbox, "\n".join(line for line in board.lines if "pop3:" not in line)
        message, recipients = dsn(mailbox[0])
        assert recipients[0]["Final-Recipient"] == "rfc822; bob@remote.example"
        assert not h.messages
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_a_message_over_the_smarthosts_size_bounces_at_once(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1], size=100) as host:
        board = relay_board(make_board, certs, port)
        assert send(board, ["bob@example.org"]) == {}
        mailbox = wait_until(lambda: fetch(board))
        _, recipients = dsn(mailbox[0])
        assert recipients[0]["Status"] == "5.3.4"
        assert not [c for c in host.handler.commands if c[0] == "MAIL"]


@pytest.mark.parametrize("case", ["name_mismatch", "untrusted"])
def test_an_unverified_certificate_defers_and_sends_no_credentials(make_board, certs, case):
    port = free_port()
    cert = certs["other"] if case == "name_mismatch" else certs["good"]
    ca = "other"  # trusted: other.example's certificate (name mismatch), or not the one shown
    with Smarthost(port, cert[0], cert[1]) as host:
        board = relay_board(make_board, certs, port, ca=ca)
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "deferred (1 tries)")
        error = board.request("queue.list")["messages"][0]["error"]
        assert ("Common Name" in error) if case == "name_mismatch" else ("trusted CA" in error), error
        assert host.handler.auth_attempts == 0 and host.handler.commands == []


def test_a_smarthost_without_starttls_gets_nothing_in_plaintext(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1], "nostarttls") as host:
        board = relay_board(make_board, certs, port)
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "deferred (1 tries): localhost does not offer STARTTLS")
        assert host.handler.commands == [] and host.handler.auth_attempts == 0


def test_a_wrong_password_defers_and_is_logged(make_board, certs):
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1], password="another") as host:
        board = relay_board(make_board, certs, port)
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "AUTH as relayuser refused: 535")
        expect_log(board, "deferred (1 tries): authentication failed: 535")
        assert not any(PASSWORD in line for line in board.lines)
        assert not [c for c in host.handler.commands if c[0] == "MAIL"]


def test_who_may_relay(make_board, certs):
    board = make_board().start()
    board.add_user("alice", "wonderland")
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<alice@pocketpost.local>")
    # No smarthost: nobody relays, even from a listed network.
    assert w.cmd("RCPT TO:<bob@example.org>") == "550 5.7.1 <bob@example.org>: Relay access denied"
    board.set_config(relay_host="localhost", relay_networks="10.0.0.0/8, 192.168.1.7")
    assert board.request("config.get", key="relay_networks")["value"] == ["10.0.0.0/8", "192.168.1.7/32"]
    # 127.0.0.1 is not in relay_networks and has not authenticated.
    assert w.cmd("RCPT TO:<bob@example.org>") == "550 5.7.1 <bob@example.org>: Relay access denied"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    w.cmd("RSET")
    # Authenticated, it may.
    import base64

    assert w.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland").decode()).startswith("235")
    w.cmd("MAIL FROM:<alice@pocketpost.local>")
    assert w.cmd("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"
    # From a listed network it may without AUTH.
    board.set_config(relay_networks="127.0.0.0/8")
    w2 = smtp_session(board.smtp_port)
    w2.cmd("MAIL FROM:<x@pocketpost.local>")
    assert w2.cmd("RCPT TO:<bob@example.org>") == "250 2.1.5 Ok"


def test_settings_are_checked_and_the_password_masked(make_board):
    board = make_board().start()
    for key, value in [("relay_security", "ssl"), ("relay_networks", "10.0.0.0/33"), ("relay_sender", "no-at-sign"),
                       ("relay_host", "bad host"), ("relay_port", 0)]:
        with pytest.raises(BoardError) as e:
            board.request("config.set", key=key, value=value)
        assert e.value.code == "INVALID"
    board.set_config(relay_password="s3cret")
    assert board.request("config.get", key="relay_password")["value"] == "********"
    assert not any("s3cret" in line for line in board.lines)


def test_queue_full_gets_452_and_local_delivery_goes_on(make_board, certs):
    # Nothing listens at the smarthost's port; its next try is 300 s away. (The relay's first
    # pass ends before the next session: from its log line on, it holds nothing. A session
    # during a pass may meet the board's temporary 451 4.3.0 instead: README, the relay's memory.)
    board = relay_board(make_board, certs, free_port(), relay_queue_messages=1, relay_time_scale=1000)
    assert send(board, ["bob@example.org"]) == {}
    expect_log(board, "deferred (1 tries)")
    w = smtp_session(board.smtp_port)
    w.cmd("MAIL FROM:<alice@pocketpost.local>")
    assert w.cmd("RCPT TO:<bob@example.org>") == "452 4.3.1 Insufficient system storage: the relay queue is full"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    assert w.cmd("Subject: local\r\n\r\nstill delivered\r\n.").startswith("250")
    assert len(wait_until(lambda: fetch(board))) == 1


def test_queueing_short_of_memory_is_tried_again_and_never_half_done(make_board, certs):
    # Nothing listens at the smarthost's port: what is queued stays listed.
    board = relay_board(make_board, certs, free_port(), relay_time_scale=1000)
    w = smtp_session(board.smtp_port)

    def relay_mail(subject):
        assert w.cmd("MAIL FROM:<alice@pocketpost.local>").startswith("250")
        assert w.cmd("RCPT TO:<bob@example.org>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        return w.cmd("Subject: {}\r\n\r\nbody\r\n.".format(subject))

    # A passing shortage, at a different point of the queueing for each `leave` (before the
    # received message was moved into the queue, after, as its envelope is written): queued by
    # the next try, once.
    queued = 0
    for leave in range(0, 2400, 160):
        board.request("debug.hold", leave=leave, next="queue")
        assert relay_mail("first").startswith("250 2.0.0 Ok: queued as "), leave
        queued += 1
        assert len(board.request("queue.list")["messages"]) == queued, leave
    # A shortage through every try: a temporary error, nothing queued, nothing left behind,
    # and the client sends the message again.
    board.request("debug.hold", leave=0, next="queue", lasting=True)
    assert relay_mail("second") == "451 4.3.0 Not enough memory, try again later"
    expect_log(board, ": not enough memory")
    assert len(board.request("queue.list")["messages"]) == queued
    assert relay_mail("second").startswith("250 2.0.0 Ok: queued as ")
    assert len(board.request("queue.list")["messages"]) == queued + 1
    w.cmd("QUIT")
    w.close()
    assert not any("INTERNAL" in line or "Traceback" in line for line in board.lines)


def test_console_queue_requests(make_board, certs):
    port = free_port()
    board = relay_board(make_board, certs, port, relay_time_scale=1000)  # nothing listens yet
    with smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=20) as s:  # one session: the pass waits for it
        assert s.sendmail("alice@pocketpost.local", ["bob@example.org"], MESSAGE) == {}
        assert s.sendmail("alice@pocketpost.local", ["carol@example.org"], MESSAGE) == {}
    expect_log(board, "deferred (1 tries)")
    def tried():
        listed = host_relay.queue_list(board.console)
        return len(listed) == 2 and all(m["tries"] >= 1 for m in listed) and listed

    listed = wait_until(tried)
    assert listed and all(m["pending"] == 1 and m["from"] == "alice@pocketpost.local" for m in listed), listed
    assert board.request("info")["queue"]["messages"] == 2
    first, second = listed
    shown = host_relay.queue_show(board.console, first["id"])
    assert shown["recipients"][0]["state"] == "pending" and shown["size"] > len(MESSAGE)
    assert host_relay.queue_delete(board.console, second["id"]) == second["id"]
    with pytest.raises(BoardError) as e:
        host_relay.queue_show(board.console, second["id"])
    assert e.value.code == "NOTFOUND"
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        assert host_relay.queue_flush(board.console) == 1
        assert wait_until(lambda: host.handler.messages), "\n".join(board.lines[-30:])
        assert [m[1] for m in host.handler.messages] == [shown["recipients"][0]["address"] and [shown["recipients"][0]["address"]]]
        assert wait_until(lambda: host_relay.queue_list(board.console) == [])


def test_the_host_commands(tmp_path, certs):
    """pocketpost relay ca install/show and queue list/show/flush/delete against pocketpost sim."""
    import json

    from sim_process import SimProcess, stop_quietly

    sim = SimProcess(tmp_path / "sim").start()
    try:
        cli = sim.cli
        for key, value in [("relay_host", "localhost"), ("relay_port", str(free_port())), ("relay_networks", "127.0.0.0/8"),
                           ("relay_password", "hush-hush")]:
            assert cli("config", "set", key, value).exit_code == 0
        assert "hush-hush" not in cli("config", "get", "relay_password").stdout
        result = cli("relay", "ca", "install", str(certs["good"][0]))
        assert result.exit_code == 0 and "installed: CN=localhost" in result.stdout, result.stdout + result.stderr
        assert json.loads(cli("relay", "ca", "show", "--json").stdout)[0]["subject"] == "CN=localhost"
        with smtplib.SMTP("127.0.0.1", sim.smtp_port, timeout=20) as s:
            s.sendmail("someone@pocketpost.local", ["bob@example.org"], MESSAGE)
        listed = wait_until(lambda: json.loads(cli("queue", "list", "--json").stdout))
        qid = listed[0]["id"]
        assert qid in cli("queue", "list").stdout
        assert "bob@example.org" in cli("queue", "show", qid).stdout
        assert cli("queue", "flush").stdout.startswith("1 messages")
        assert cli("queue", "delete", qid).stdout == f"deleted {qid}\n"
        assert cli("queue", "list").stdout == "the queue is empty\n"
        result = cli("queue", "show", qid)
        assert result.exit_code != 0 and "no queued message" in result.stderr
    finally:
        stop_quietly(sim)


@pytest.mark.memory
def test_power_cuts_while_relaying_lose_nothing(make_board, certs):
    """SIGKILL at several points while the queue is being sent: after each restart the queue
    resumes; every message arrives, and a cut sends at most one message again (the transaction
    in flight)."""
    import random

    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.data_delay = 0.3  # a window between the smarthost having a message and the board hearing 250
        board = relay_board(make_board, certs, port)
        subjects = [f"cut {i}" for i in range(6)]
        with smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=20) as s:
            for subject in subjects:
                s.sendmail("alice@pocketpost.local", ["bob@example.org"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        rng = random.Random(12)
        for cut in range(3):
            arrived = len(h.messages)
            wait_until(lambda: len(h.messages) > arrived, timeout=20)
            time.sleep(rng.uniform(0, 0.3))
            board.kill()
            board.start()

        def got():
            return [next(line for line in m[2].decode().splitlines() if line.startswith("Subject: "))[9:] for m in h.messages]

        assert wait_until(lambda: set(got()) == set(subjects), timeout=30), got()
        counts = {s: got().count(s) for s in subjects}
        assert all(n >= 1 for n in counts.values()), counts
        assert sum(counts.values()) <= len(subjects) + 3, counts  # at most one duplicate per cut
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_undelivered_mail_bounces_after_its_lifetime(make_board, certs):
    """A recipient deferred again and again bounces once relay_lifetime has passed (the test
    drives time: 20 ms count as a second, so the lifetime of 300 s is 6 s and the first retry
    comes 6 s after the first try, when the lifetime is over)."""
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.rcpt_replies["bob@example.org"] = ["451 4.3.0 Try again later"]
        board = relay_board(make_board, certs, port, relay_time_scale=20, relay_lifetime=300)
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "deferred (1 tries): RCPT TO:<bob@example.org>: 451 4.3.0 Try again later")
        mailbox = wait_until(lambda: fetch(board), timeout=30)
        assert mailbox, "\n".join(board.lines[-30:])
        message, recipients = dsn(mailbox[0])
        assert message["To"] == "alice@pocketpost.local"
        assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in recipients] == [
            ("rfc822; bob@example.org", "failed", "4.4.7")]
        assert recipients[0]["Diagnostic-Code"] == (
            "X-pocketpost; expired after 1 tries: RCPT TO:<bob@example.org>: 451 4.3.0 Try again later")
        assert [c for c in h.commands if c[0] == "RCPT"] == [("RCPT", "bob@example.org")]  # tried once
        assert not h.messages
        expect_log(board, "done: bob@example.org bounced")
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_relay_rate_spaces_the_messages(make_board, certs):
    """relay_rate messages a minute at most: with 2 a minute (a minute being 6 s here), the
    third of three messages queued at once waits for the next minute."""
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        board = relay_board(make_board, certs, port, relay_time_scale=100, relay_rate=2)
        with smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=20) as s:  # one session: one pass after it
            for i in range(3):
                assert s.sendmail("alice@pocketpost.local", [f"r{i}@example.org"], MESSAGE) == {}
        assert wait_until(lambda: len(h.messages) >= 2, timeout=20), "\n".join(board.lines[-30:])
        listed = board.request("queue.list")["messages"]
        assert len(listed) == 1 and listed[0]["tries"] == 0  # waiting for the rate, not deferred
        assert wait_until(lambda: len(h.messages) == 3, timeout=30)
        assert sorted(m[1][0] for m in h.messages) == ["r0@example.org", "r1@example.org", "r2@example.org"]
        # The minute began before the first message reached the smarthost: allow for its sending.
        assert h.times[2] - h.times[0] >= 4.5, h.times
        assert not [line for line in board.lines if "deferred" in line and "not enough memory" not in line]  # (the board's own shortage: tried again, no try counted)
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_queue_octets_limit_gets_452_and_local_delivery_goes_on(make_board, certs):
    """relay_queue_octets: a message that would take the queue past it is refused at the end of
    DATA with 452 4.3.1, and while the queue is at it or over it (the limit lowered), at RCPT;
    nothing of it is queued, and mail for local users is still delivered. (One SMTP session: the
    relay's pass waits for it.)"""
    board = relay_board(make_board, certs, free_port(), relay_queue_octets=131072, relay_time_scale=1000)
    body = (b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 625).decode()  # 50 KB
    w = smtp_session(board.smtp_port)
    for rcpt in ("bob@example.org", "carol@example.org"):  # 100 KB queued
        w.cmd("MAIL FROM:<alice@pocketpost.local>")
        assert w.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
        assert w.cmd("DATA").startswith("354")
        assert w.cmd(body + ".").startswith("250 2.0.0 Ok: queued as ")
    # 50 KB more would take it past 128 KB: refused when its size is known.
    w.cmd("MAIL FROM:<alice@pocketpost.local>")
    assert w.cmd("RCPT TO:<dave@example.org>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    assert w.cmd(body + ".") == "452 4.3.1 Insufficient system storage"
    # With the limit lowered below what is queued, a remote recipient is refused at once.
    board.set_config(relay_queue_octets=65536)
    w.cmd("MAIL FROM:<alice@pocketpost.local>")
    assert w.cmd("RCPT TO:<erin@example.org>") == "452 4.3.1 Insufficient system storage: the relay queue is full"
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    assert w.cmd("DATA").startswith("354")
    assert w.cmd("Subject: local\r\n\r\nstill delivered\r\n.").startswith("250")
    assert w.cmd("QUIT").startswith("221")
    queued = board.request("queue.list")["messages"]
    assert len(queued) == 2 and all(m["recipients"] == 1 for m in queued)
    assert 100000 < board.request("info")["queue"]["octets"] < 131072
    assert len(wait_until(lambda: fetch(board))) == 1


def test_more_than_100_remote_recipients_go_in_transactions_of_100(make_board, certs):
    """One message takes 100 recipients of other domains (452 4.5.3 for more, RFC 5321
    §4.5.3.1.8: the client sends the rest in another transaction), so each goes to the
    smarthost in one transaction of at most 100; a smarthost that takes fewer (452 4.5.3 to
    RCPT) gets the rest in further transactions of the same session, none deferred."""
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        h = host.handler
        h.max_rcpts = 40
        board = relay_board(make_board, certs, port)
        rcpts = [f"r{i:03d}@example.org" for i in range(150)]
        with smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=30) as s:
            refused = s.sendmail("alice@pocketpost.local", rcpts, MESSAGE)
            assert sorted(refused) == rcpts[100:]
            assert set(refused.values()) == {(452, b"4.5.3 Error: too many recipients")}
            assert s.sendmail("alice@pocketpost.local", sorted(refused), MESSAGE) == {}
        assert wait_until(lambda: sum(len(m[1]) for m in h.messages) == 150, timeout=30), "\n".join(board.lines[-30:])
        # 100 as 40 + 40 + 20 and 50 as 40 + 10 (the two queued messages in either order)
        assert sorted(len(m[1]) for m in h.messages) == [10, 20, 40, 40, 40]
        assert sorted(a for m in h.messages for a in m[1]) == rcpts  # each once
        assert all(m[2].endswith(MESSAGE) for m in h.messages)
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])
        # Nothing deferred by the smarthost (a pass that met the board's own shortage is tried
        # again 2 s later, no try counted).
        assert not [line for line in board.lines if "deferred" in line and "not enough memory" not in line]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_relay_through_postfix(make_board, certs, security):
    """Postfix's smtpd as the smarthost (a private Postfix with AUTH through Dovecot and TLS
    required, tests/postfix_smarthost.py): the message arrives as sent, with the masqueraded
    envelope sender, after AUTH inside a verified TLS session; Postfix passes it on unchanged
    but for its own Received: field (its dot-stuffing and ours undone)."""
    from postfix_smarthost import PostfixSmarthost

    with PostfixSmarthost(certs["good"][0], certs["good"][1], USER, PASSWORD) as postfix:
        port = postfix.submission if security == "starttls" else postfix.smtps
        board = relay_board(make_board, certs, port, security=security)
        assert send(board, ["bob@example.org", "carol@example.net"]) == {}
        assert wait_until(lambda: postfix.handler.messages, timeout=30), "\n".join(board.lines[-30:]) + postfix.log()
        mail_from, rcpts, content = postfix.handler.messages[0]
        assert (mail_from, sorted(rcpts)) == ("me@provider.example", ["bob@example.org", "carol@example.net"])
        assert content.endswith(MESSAGE)
        fields = content[: -len(MESSAGE)].decode().replace("\r\n\t", " ").replace("\r\n ", " ").splitlines()
        assert [f.split(" ", 2)[:2] for f in fields] == [["Received:", "from"], ["Received:", "from"]]
        assert "by smarthost.test (Postfix) with ESMTPSA" in fields[0]  # S: TLS, A: authenticated
        assert "by pocketpost (pocketpost)" in fields[1]
        assert postfix.wait_log("sasl_method=PLAIN, sasl_username=relayuser")
        expect_log(board, "done: bob@example.org sent, carol@example.net sent")
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])


def test_postfix_refusing_the_password_defers(make_board, certs):
    from postfix_smarthost import PostfixSmarthost

    with PostfixSmarthost(certs["good"][0], certs["good"][1], USER, "another") as postfix:
        board = relay_board(make_board, certs, postfix.submission)
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "AUTH as relayuser refused: 535 5.7.8 Error: authentication failed", timeout=20)
        expect_log(board, "deferred (1 tries): authentication failed: 535 5.7.8")
        assert not postfix.handler.messages
        assert postfix.wait_log("SASL PLAIN authentication failed")
        assert "sasl_method=PLAIN" not in postfix.log()  # never logged in, nothing taken
        assert postfix.wait_log("auth=0/1 quit=1")  # the session ended with QUIT
        assert not any(PASSWORD in line for line in board.lines)


def test_the_relay_waits_for_the_clock(make_board, certs):
    """A board whose clock is not set yet (no NTP answer) cannot check the smarthost's
    certificate: its queue waits, no try counted and nothing sent, and goes on once the clock is
    set. (The emulated board's hook relay.clock makes the relay see its clock as not set.)"""
    port = free_port()
    with Smarthost(port, certs["good"][0], certs["good"][1]) as host:
        board = relay_board(make_board, certs, port)
        assert board.request("relay.clock", unset=True) == {"unset": True}
        assert send(board, ["bob@example.org"]) == {}
        expect_log(board, "WARN relay: waiting for the clock to be set (NTP): certificates cannot be checked before")
        [queued] = board.request("queue.list")["messages"]
        assert (queued["tries"], queued["error"]) == (0, "")
        assert host.handler.commands == []  # not even a connection
        assert board.request("relay.clock", unset=False) == {"unset": False}
        assert wait_until(lambda: host.handler.messages), "\n".join(board.lines[-20:])
        expect_log(board, "INFO relay: the clock is set: the queue goes on")
        assert wait_until(lambda: board.request("queue.list")["messages"] == [])
        assert sum("waiting for the clock" in line for line in board.lines) == 1  # said once
