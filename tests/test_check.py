"""`pocketpost check` against the emulated board and against reference servers: Dovecot POP3
with aiosmtpd delivering into its Maildir (tests/reference_servers.py)."""

import json
import re
import smtplib

import pytest
from click.testing import CliRunner

from pocketpost_host import check

import reference_servers
from reference_servers import ReferenceServers

BOARD_DOMAIN = "pocketpost.local"

# Mail in the maildrop before a run, which the run must leave alone: one of them looks like a
# test message of an earlier, interrupted run (same sender and Message-ID pattern, other token).
OTHER_MESSAGES = [
    b"From: bob@example.org\r\nSubject: lunch?\r\nMessage-ID: <lunch@example.org>\r\n\r\n.see you at noon\r\n",
    b"From: pocketpost check <pocketpost-check@example.org>\r\n"
    b"Subject: pocketpost check ppc000000000000 plain\r\n"
    b"Message-ID: <ppc000000000000.plain@pocketpost-check.invalid>\r\n"
    b"\r\n"
    b"left over from an interrupted run\r\n",
]


def deliver_other_messages(smtp_port, domain):
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as smtp:
        for message in OTHER_MESSAGES:
            smtp.sendmail("bob@example.org", [f"alice@{domain}"], message)


def maildrop(pop3_port):
    """Every message in alice's maildrop, as RETR sends it (un-stuffed)."""
    target = check.Target(host="127.0.0.1", user="alice", password="wonderland", domain="", pop3_port=pop3_port)
    pop = check.Pop3Client(target)
    assert pop.login("alice", "wonderland").ok
    count, _ = check.parse_stat(pop.ok("STAT"))
    messages = [pop.multiline(f"RETR {n}") for n in range(1, count + 1)]
    pop.quit()
    return messages


def assert_only_other_messages_left(pop3_port):
    left = maildrop(pop3_port)
    assert len(left) == len(OTHER_MESSAGES)
    for message, sent in zip(left, OTHER_MESSAGES):
        assert check.compare_content(sent, message) is None


def command_line(smtp_port, pop3_port, domain, *extra):
    return [
        "--host", "127.0.0.1", "--pop3-port", str(pop3_port), "--smtp-port", str(smtp_port),
        "--user", "alice", "--password-stdin", "--domain", domain, "--timeout", "20", *extra,
    ]  # fmt: skip


def invoke(arguments):
    """Runs `pocketpost check` with the password on standard input; re-raises its crashes."""
    result = CliRunner().invoke(check.check_command, arguments, input="wonderland\n")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def reference_target(ref):
    return check.Target(
        host="127.0.0.1",
        user=ref.user,
        password=ref.password,
        domain=ref.domain,
        pop3_port=ref.pop3_port,
        smtp_port=ref.smtp_port,
        timeout=20,
    )


def not_passed(results):
    """{check: (result, detail)} of the checks that did not pass."""
    return {r.name: (r.result, r.detail) for r in results if r.result != check.PASS}


# ---- the emulated board: everything must pass


def test_check_passes_on_the_emulated_board(board):
    deliver_other_messages(board.smtp_port, BOARD_DOMAIN)
    arguments = command_line(board.smtp_port, board.pop3_port, BOARD_DOMAIN, "--json")
    result = invoke(arguments)
    report = json.loads(result.stdout)
    assert {c["name"]: (c["result"], c["detail"]) for c in report["checks"] if c["result"] != "pass"} == {}
    assert [c["name"] for c in report["checks"]] == list(check.CHECKS)
    assert report["passed"] is True and result.exit_code == 0
    assert f"[{len(check.CHECKS)}/{len(check.CHECKS)}] cleanup ... pass" in result.stderr  # the progress lines
    assert_only_other_messages_left(board.pop3_port)


# ---- the reference servers: everything they support must pass


def test_check_passes_on_the_reference_servers():
    with ReferenceServers(lock_session=True, long_lines=True) as ref:
        deliver_other_messages(ref.smtp_port, ref.domain)
        report = check.run_checks(reference_target(ref))
        # aiosmtpd handles pipelined commands but does not advertise PIPELINING.
        assert {name: result for name, (result, _) in not_passed(report.results).items()} == {
            "smtp-pipelining": check.UNSUPPORTED
        }, not_passed(report.results)
        assert report.passed(allow_unsupported=True) and not report.passed()
        assert_only_other_messages_left(ref.pop3_port)


def test_check_reports_what_default_reference_servers_lack():
    # Dovecot's default pop3_lock_session=no lets a second session in; aiosmtpd refuses lines
    # over 1000 octets by default. Both are allowed by the RFCs: "unsupported", not "fail".
    with ReferenceServers(lock_session=False, long_lines=False) as ref:
        arguments = command_line(ref.smtp_port, ref.pop3_port, ref.domain)
        result = invoke(arguments)
        rows = [line.split(None, 2) for line in result.stdout.splitlines()[1:-1]]
        assert [row[0] for row in rows] == list(check.CHECKS)
        assert {row[0]: row[1] for row in rows if row[1] != "pass"} == {
            "smtp-pipelining": "unsupported",
            "pop3-in-use": "unsupported",
            "content-long-lines": "unsupported",
        }, result.stdout
        assert result.exit_code == 1
        assert result.stdout.splitlines()[-1].startswith("22 passed, 0 failed, 3 unsupported")

        allowed = invoke(arguments + ["--allow-unsupported"])
        assert allowed.exit_code == 0, allowed.stdout


def test_check_fails_when_delivery_loses_leading_dots(monkeypatch):
    # A delivery that un-stuffs twice, dropping the dot that starts a line.
    deliver = reference_servers.MaildirDelivery.deliver

    def deliver_without_leading_dots(self, message):
        deliver(self, re.sub(rb"(?m)^\.", b"", message))

    monkeypatch.setattr(reference_servers.MaildirDelivery, "deliver", deliver_without_leading_dots)
    with ReferenceServers(lock_session=False) as ref:
        report = check.run_checks(reference_target(ref))
    failed = {name: detail for name, (result, detail) in not_passed(report.results).items() if result == check.FAIL}
    assert sorted(failed) == ["content-8bit", "content-dot-lines", "content-large", "content-long-lines"]
    assert failed["content-dot-lines"].startswith("differs at octet")


def test_check_fails_a_wrong_password_without_crashing(board):
    board.set_config(auth_fail_delay_ms=0)
    arguments = command_line(board.smtp_port, board.pop3_port, BOARD_DOMAIN, "--json")
    arguments.remove("--password-stdin")  # the password is prompted for
    result = CliRunner().invoke(check.check_command, arguments, input="not-the-password\n")
    assert "Password for alice:" in result.stderr and "not-the-password" not in result.stderr
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["checks"]
    failed = {c["name"]: (c["result"], c["detail"]) for c in checks if c["result"] != "pass"}
    assert failed["pop3-login"][0] == check.FAIL and "-ERR" in failed["pop3-login"][1]
    assert failed["cleanup"][0] == check.FAIL  # it could not log in to delete the test messages
    assert "smtp-send" not in failed  # SMTP needs no password


def test_the_reference_servers_name_the_packages_they_need(monkeypatch, tmp_path):
    monkeypatch.setattr(reference_servers, "SEARCH_PATH", str(tmp_path))
    with pytest.raises(reference_servers.MissingTool, match="apt-get install dovecot-core dovecot-pop3d"):
        ReferenceServers().start()


# ---- the comparisons the checks rely on


def test_stuffing_doubles_leading_dots_and_ends_with_a_dot_line():
    assert check.stuff(b".a\r\nb.\r\n.\r\n..\r\n") == b"..a\r\nb.\r\n..\r\n...\r\n.\r\n"


def test_content_may_follow_prepended_header_fields_only():
    sent = b"Subject: x\r\n\r\n.body\r\n"
    trace = b"Return-Path: <a@example.org>\r\nReceived: from x\r\n\tby y; date\r\n"
    assert check.compare_content(sent, sent) is None
    assert check.compare_content(sent, trace + sent) is None
    assert "not a header field" in check.compare_content(sent, b"junk line\r\n" + sent)
    assert "not a header field" in check.compare_content(sent, b"\tcontinued\r\n" + sent)
    assert "joined" in check.compare_content(sent, b"X-Trace: 1" + sent)


def test_content_differences_are_located():
    sent = b"Subject: x\r\n\r\nline 1\r\n..two dots\r\nline 3\r\n"
    lost_a_dot = b"Received: by y\r\n" + sent.replace(b"..two", b".two")
    assert check.compare_content(sent, lost_a_dot).startswith("differs at octet 23 of 42 (line 4;")
    assert "is not in the" in check.compare_content(sent, b"Subject: y\r\n\r\n")
    truncated = sent[:-3]
    assert check.compare_content(sent, truncated).startswith("differs at octet 39 of 42 (line 5;")


def test_top_is_the_header_the_blank_line_and_the_first_body_lines():
    message = b"A: 1\r\nB: 2\r\n\r\none\r\n.two\r\nthree\r\n"
    assert check.top_of(message, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert check.top_of(message, 2) == b"A: 1\r\nB: 2\r\n\r\none\r\n.two\r\n"
    assert check.top_of(message, 3) == message
    assert check.top_of(message, 99) == message
    assert check.top_of(b"A: 1\r\n", 0) == b"A: 1\r\n"  # no body: the whole message


def test_the_large_message_has_the_asked_size_and_varied_dot_lines():
    messages = check.build_messages("ppc0", "alice", "example.test", 1 << 20)
    large = messages["large"].data
    assert len(large) == 1 << 20 and large.endswith(b"\r\n")
    lines = large.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert lines.count(b".") > 50 and sum(line.startswith(b".") for line in lines) > 1000
    assert messages["large"].message_id == "<ppc0.large@pocketpost-check.invalid>"
