"""A heap that runs short is a temporary condition: every place the firmware allocates for a
client answers a temporary error that says why, logs one line and serves on; nothing
acknowledged is lost and nothing half-stored becomes visible. The shortage is made on purpose
with the emulated board's test hook (console debug.hold, --debug-boot-hold), so each path is
reached at a chosen point, not by luck."""

import base64
import hashlib
import subprocess
import textwrap
import time

import pytest

import sd_card
from emulated_board import HEAP, TEST_ITERATIONS
from pocketpost_host import firmware
from pocketpost_host import tls as certificates
from pocketpost_host.console import NOMEM_RETRIES
from pocketpost_host.errors import BoardError
from pocketpost_host.passwords import hash_password

from wire import Wire, pop3_login, send_mail, smtp_session, strip_trace, unstuff

# Every test here is memory-sensitive: `make test` runs them again twice under CPU load.
pytestmark = pytest.mark.memory

POP3_NOMEM = "-ERR [SYS/TEMP] Not enough memory, try again later."
SMTP_NOMEM = "451 4.3.0 Not enough memory, try again later"


def hold(board, leave, **options):
    """Leaves `leave` octets of the board's heap free: until release, or with next="pop3",
    "smtp" or True (the console) only while the next command or request runs (until the first
    relief, or with lasting=True through its redo)."""
    return board.request("debug.hold", leave=leave, **options)["heap_free"]


def release(board):
    board.request("debug.hold")


def raw_request(board, command, **args):
    """A console request without the client's retries of a NOMEM answer."""
    board.console.nomem_retries = 0
    try:
        return board.request(command, **args)
    finally:
        board.console.nomem_retries = NOMEM_RETRIES


def deliver_many(port, count, body=b"Subject: bulk\r\n\r\nline\r\n"):
    """Delivers `count` messages to alice through one SMTP session (MAIL, RCPT and DATA
    pipelined)."""
    w = smtp_session(port)
    for _ in range(count):
        w.send(b"MAIL FROM:<bulk@example.org>\r\nRCPT TO:<alice@pocketpost.local>\r\nDATA\r\n")
        assert w.smtp_reply()[0].startswith("250")
        assert w.smtp_reply()[0].startswith("250")
        assert w.smtp_reply()[0].startswith("354")
        w.send(body + b".\r\n")
        assert w.smtp_reply()[0].startswith("250 2.0.0 Ok: queued")
    w.cmd("QUIT")
    w.close()


def test_console_request_short_of_memory_is_refused_and_the_board_serves_on(board):
    send_mail(board.smtp_port, b"Subject: kept\r\n\r\nbefore\r\n")
    hold(board, 300, next=True, lasting=True)  # running the request again does not help
    with pytest.raises(BoardError) as e:
        raw_request(board, "user.list")
    assert e.value.code == "NOMEM"
    assert e.value.board_message == "not enough memory for this request now, try again later"
    assert board.wait_log("WARN console: request refused: not enough memory")
    # The same request again, and the board's clients, as if nothing had happened.
    assert [u["name"] for u in board.request("user.list")["users"]] == ["alice"]
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT") == "+OK 1 {}".format(w.cmd("LIST 1").split()[2])
    w.cmd("QUIT")
    assert not any("INTERNAL" in line or "Traceback" in line for line in board.lines)


def test_a_passing_shortage_in_a_request_is_met_by_running_it_again(board):
    # Only the first run of the next request is short (the heap held for it is given back
    # with the rest when the shortage is met): the board runs it again and answers.
    hold(board, 200, next=True)
    assert raw_request(board, "mailbox.stats", name="alice")["mailboxes"][0]["name"] == "alice"
    assert board.wait_log("WARN console: request ran short of memory, run again")
    assert not board.log_has("request refused")


def test_a_change_short_of_memory_is_made_once(board):
    # user.add runs short before it writes (its one change comes last): run again, it adds bob.
    hold(board, 0, next=True)
    assert raw_request(board, "user.add", name="bob", hash=hash_password("builder", TEST_ITERATIONS)) == {"name": "bob"}
    assert board.wait_log("WARN console: request ran short of memory, run again")
    assert sorted(u["name"] for u in board.request("user.list")["users"]) == ["alice", "bob"]
    assert pop3_login(board.pop3_port, "bob", "builder").cmd("QUIT") == "+OK Logging out."


def test_pop3_login_short_of_memory_is_a_temporary_error_and_unlocks(board):
    deliver_many(board.smtp_port, 2100)  # deletion marks in three blocks
    w = Wire(board.pop3_port)
    w.line()
    assert w.cmd("USER alice").startswith("+OK")
    hold(board, 400, next="pop3")
    assert w.cmd("PASS wonderland") == POP3_NOMEM
    assert board.wait_log("WARN pop3: 127.0.0.1 not enough memory for a command")
    # The session goes on, and the mailbox was not left locked.
    assert w.cmd("USER alice").startswith("+OK")
    assert w.cmd("PASS wonderland").startswith("+OK Logged in, 2100 messages")
    assert w.cmd("STAT").startswith("+OK 2100 ")
    w.cmd("DELE 2100")
    assert w.cmd("QUIT") == "+OK Logging out."
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 2099 ")
    w.cmd("QUIT")


def test_smtp_command_short_of_memory_is_451_and_the_session_goes_on(board):
    w = smtp_session(board.smtp_port)
    hold(board, 0, next="smtp")
    assert w.cmd("MAIL FROM:<bob@example.org>") == SMTP_NOMEM
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: after\r\n\r\nafter the shortage\r\n.\r\n")
    assert w.smtp_reply()[0].startswith("250 2.0.0 Ok: queued as ")
    w.cmd("QUIT")
    assert board.wait_log("WARN smtp: 127.0.0.1 not enough memory for a command")


def test_a_recipient_short_of_memory_is_451_and_not_delivered_to(board):
    board.add_user("bob", "builder")
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<carol@example.org>").startswith("250")
    hold(board, 0, next="smtp")  # passing: RCPT is run again, and the recipient counted once
    assert w.cmd("RCPT TO:<alice@pocketpost.local>") == "250 2.1.5 Ok"
    assert board.wait_log("WARN smtp: 127.0.0.1 short of memory for a command, run again")
    hold(board, 0, next="smtp", lasting=True)
    assert w.cmd("RCPT TO:<bob@pocketpost.local>") == SMTP_NOMEM
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: one recipient\r\n\r\nbody\r\n.\r\n")
    assert w.smtp_reply()[0].startswith("250 2.0.0 Ok: queued as ")
    w.cmd("QUIT")
    login = pop3_login(board.pop3_port)
    assert login.cmd("RETR 1").startswith("+OK")
    # One recipient counted: the trace names it (RFC 5321 §4.4 "for" with a single recipient).
    assert b"\r\n\tfor <alice@pocketpost.local>;" in unstuff(login.multiline())
    login.cmd("QUIT")
    bob = pop3_login(board.pop3_port, user="bob", password="builder")
    assert bob.cmd("STAT") == "+OK 0 0"  # the client heard 451 for bob: nothing for him
    bob.cmd("QUIT")


def test_delivery_short_of_memory_stores_nothing_and_can_be_sent_again(board):
    send_mail(board.smtp_port, b"Subject: first\r\n\r\none\r\n")
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    hold(board, 0, next="smtp", lasting=True)  # running DATA again does not help
    assert w.cmd("DATA") == SMTP_NOMEM
    login = pop3_login(board.pop3_port)
    assert login.cmd("STAT").startswith("+OK 1 ")  # nothing half-stored is visible
    login.cmd("QUIT")
    # The transaction is still open: DATA again, and the message is stored once.
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: second\r\n\r\nagain\r\n.\r\n")
    assert w.smtp_reply()[0].startswith("250 2.0.0 Ok: queued as ")
    w.cmd("QUIT")
    login = pop3_login(board.pop3_port)
    assert login.cmd("STAT").startswith("+OK 2 ")
    login.cmd("RETR 2")
    assert unstuff(login.multiline()).endswith(b"Subject: second\r\n\r\nagain\r\n")
    login.cmd("QUIT")
    assert not any("INTERNAL" in line or "Traceback" in line for line in board.lines)


def test_a_passing_shortage_at_data_is_met_by_running_it_again(board):
    w = smtp_session(board.smtp_port)
    assert w.cmd("MAIL FROM:<bob@example.org>").startswith("250")
    assert w.cmd("RCPT TO:<alice@pocketpost.local>").startswith("250")
    hold(board, 0, next="smtp")
    assert w.cmd("DATA").startswith("354")
    w.send(b"Subject: once\r\n\r\nonce\r\n.\r\n")
    assert w.smtp_reply()[0].startswith("250 2.0.0 Ok: queued as ")
    w.cmd("QUIT")
    assert board.wait_log("WARN smtp: 127.0.0.1 short of memory for a command, run again")
    login = pop3_login(board.pop3_port)
    assert login.cmd("STAT").startswith("+OK 1 ")  # stored once
    login.cmd("QUIT")
    # The reserve given up for the redo is taken again once the sessions have ended.
    assert reserve_taken_again(board)


def test_a_passing_shortage_in_retr_is_met_by_running_it_again(board):
    send_mail(board.smtp_port, b"Subject: read me\r\n\r\nbody\r\n")
    w = pop3_login(board.pop3_port)
    hold(board, 0, next="pop3")
    assert w.cmd("RETR 1").startswith("+OK")
    assert b"Subject: read me\r\n\r\nbody\r\n" in unstuff(w.multiline())
    assert board.wait_log("WARN pop3: 127.0.0.1 short of memory for a command, run again")
    # (A lasting shortage is not asked for here: the test hook leaves a few hundred octets in
    # holes, which RETR's and TOP's redo fitted in now and then, in CI runs; DATA, which needs
    # more, shows a lasting shortage on a command that is run again.)
    assert w.cmd("TOP 1 0").startswith("+OK")
    w.multiline()
    assert w.cmd("QUIT") == "+OK Logging out."


def test_a_client_taken_short_of_memory_is_taken_again_or_refused_and_the_port_serves_on(board):
    # A passing shortage as a connection is taken (its stream and its task): taken again with
    # the heap relieved, and served.
    hold(board, 0, next="accept")
    w = Wire(board.pop3_port)
    assert w.line() == "+OK pocketpost POP3 ready."
    assert board.wait_log("WARN pop3: a client taken again after a shortage")
    assert w.cmd("QUIT") == "+OK Logging out."
    w.close()
    # A lasting one: the client hears the temporary error, and the port takes the next one.
    hold(board, 0, next="accept", lasting=True)
    w = Wire(board.smtp_port)
    assert w.line() == "421 4.3.0 Not enough memory, try again later"
    w.close()
    assert board.wait_log("WARN smtp: a client refused: not enough memory")
    s = smtp_session(board.smtp_port)
    assert s.cmd("NOOP") == "250 2.0.0 Ok"
    s.cmd("QUIT")
    w = pop3_login(board.pop3_port)
    assert w.cmd("QUIT") == "+OK Logging out."


def test_a_module_cut_short_by_a_shortage_gives_its_heap_back_once_unloaded(app_dir, tmp_path):
    # MicroPython takes a module whose import failed out of sys.modules but leaves it in the
    # table's slot, where the collector sees it: at 160k a console request's code cut short
    # (~7 KB) stayed held that way after its redo. unload() frees it.
    (tmp_path / "cut_short.py").write_text("HELD = bytearray(30000)\nMORE = bytearray(1 << 30)\n")
    script = textwrap.dedent(
        """
        import gc, sys
        sys.path[:0] = [{app!r}, {here!r}]
        from pocketpost import unload
        gc.collect()
        before = gc.mem_free()
        try:
            import cut_short
        except MemoryError:
            pass
        gc.collect()
        print("cut_short" in sys.modules, before - gc.mem_free() > 30000)
        unload("cut_short")
        gc.collect()
        print(before - gc.mem_free() < 1024)
        """
    ).format(app=str(app_dir), here=str(tmp_path))
    result = subprocess.run([firmware.find_micropython(), "-X", "heapsize=" + HEAP, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "True", "True"], result.stdout + result.stderr


def test_auth_short_of_memory_after_its_prompts_is_a_temporary_failure_and_the_session_goes_on(board):
    # AUTH LOGIN's prompts have been answered, so the command cannot be run again: a temporary
    # failure (SMTP: RFC 4954's 454 4.7.0), never the session closed (at 112k on 32 bits it
    # was closed with 421), and the next AUTH logs in.
    user = base64.b64encode(b"alice").decode()
    password = base64.b64encode(b"wonderland").decode()
    s = smtp_session(board.smtp_port)
    hold(board, 0, next="auth", lasting=True)
    assert s.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert s.cmd(user) == "334 UGFzc3dvcmQ6"
    assert s.cmd(password) == "454 4.7.0 Temporary authentication failure (not enough memory)"
    assert board.wait_log("INFO smtp: 127.0.0.1 AUTH LOGIN: not enough memory") or board.wait_log("WARN smtp: AUTH: not enough memory")
    assert s.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert s.cmd(user) == "334 UGFzc3dvcmQ6"
    assert s.cmd(password) == "235 2.7.0 Authentication successful"
    s.cmd("QUIT")
    w = Wire(board.pop3_port)
    w.line()
    hold(board, 0, next="auth", lasting=True)
    assert w.cmd("AUTH LOGIN") == "+ VXNlcm5hbWU6"
    assert w.cmd(user) == "+ UGFzc3dvcmQ6"
    assert w.cmd(password) == POP3_NOMEM
    assert w.cmd("AUTH LOGIN") == "+ VXNlcm5hbWU6"
    assert w.cmd(user) == "+ UGFzc3dvcmQ6"
    assert w.cmd(password).startswith("+OK Logged in")
    assert w.cmd("QUIT") == "+OK Logging out."
    assert not any("INTERNAL" in line or "Traceback" in line for line in board.lines)


def test_auth_short_of_memory_is_a_temporary_error(board):
    plain = "AUTH PLAIN " + base64.b64encode(b"\x00alice\x00wonderland").decode()
    w = Wire(board.pop3_port)
    w.line()
    hold(board, 0, next="pop3", lasting=True)
    assert w.cmd(plain) == POP3_NOMEM
    assert w.cmd(plain).startswith("+OK Logged in")
    w.cmd("QUIT")
    s = smtp_session(board.smtp_port)
    hold(board, 0, next="smtp", lasting=True)
    assert s.cmd(plain) == SMTP_NOMEM
    assert s.cmd(plain).startswith("235")  # the shortage counted as no failed login
    s.cmd("QUIT")
    assert reserve_taken_again(board)


def test_auth_code_that_cannot_load_is_loaded_again_after_a_relief(board):
    # AUTH's code (auth.py, sasl.py) is loaded per exchange: a passing shortage as it loads is
    # met by loading it again once the heap is relieved, and the login goes through.
    plain = "AUTH PLAIN " + base64.b64encode(b"\x00alice\x00wonderland").decode()
    w = Wire(board.pop3_port)
    w.line()
    hold(board, 0, next="pop3")
    assert w.cmd(plain).startswith("+OK Logged in")
    w.cmd("QUIT")
    s = smtp_session(board.smtp_port)
    hold(board, 0, next="smtp")
    assert s.cmd(plain) == "235 2.7.0 Authentication successful"
    s.cmd("QUIT")
    assert not board.log_has("not enough memory")


def test_log_tail_streams_lines_as_parts(board):
    for i in range(40):
        board.request("config.set", key="max_bad_commands", value=10 + i % 5)
    lines = board.request("log.tail", n=1000)["lines"]
    assert len(lines) > 10 and all(" INFO " in line or " WARN " in line for line in lines)
    assert lines[-1].endswith("INFO console: config max_bad_commands set")
    # One frame per line, none of them longer than a log line and its frame.
    assert max(len(line) for line in lines) <= 240


def test_tls_commit_short_of_memory_keeps_the_installed_certificate(make_board):
    board = make_board().start()
    first = certificates.generate("127.0.0.1", days=30)
    second = certificates.generate("127.0.0.1", days=60)
    der_first = certificates.to_der(*first)
    der_second = certificates.to_der(*second)
    certificates.install(board.console, *der_first)
    board.request("tls.begin")
    for name, data in zip(("cert", "key"), der_second):
        board.request("tls.chunk", file=name, data=base64.b64encode(data).decode())
    digests = {"cert_sha256": hashlib.sha256(der_second[0]).hexdigest(), "key_sha256": hashlib.sha256(der_second[1]).hexdigest()}
    hold(board, 300, next=True)
    with pytest.raises(BoardError) as e:
        raw_request(board, "tls.commit", **digests)
    assert e.value.code == "NOMEM"
    assert "unchanged" in e.value.board_message
    assert board.request("tls.show")["sha256"] == certificates.fingerprint(der_first[0])
    # The staged files are still there: the same commit, with the heap back, installs them.
    shown = board.request("tls.commit", **digests)
    assert shown["applies"] in ("now", "reboot")
    if "sha256" not in shown:  # installed; the heap had no room for its details in the reply
        shown = board.request("tls.show")
    assert shown["sha256"] == certificates.fingerprint(der_second[0])
    board.restart()
    assert board.request("tls.show")["sha256"] == certificates.fingerprint(der_second[0])


def reserve_taken_again(board):
    """Whether the 2 KB reserve given up in a shortage is taken again once the sessions have
    ended: at once where the heap has a block for it, else by the once-a-second pass after
    the protocols' code is unloaded (3 s without a session; at 112k on 32-bit the heap had no
    2 KB block before)."""
    deadline = time.monotonic() + 6
    while board.request("info")["heap_reserve"] != 2048:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def quit_after_deleting_two(board, leave, lasting):
    """Delivers two messages, marks both deleted and sends QUIT with `leave` octets of the heap
    free for it: (QUIT's reply, messages before, messages a new session finds after)."""
    for i in range(2):
        send_mail(board.smtp_port, b"Subject: doomed\r\n\r\nbody\r\n")
    w = pop3_login(board.pop3_port)
    before = int(w.cmd("STAT").split()[1])
    assert w.cmd("DELE 1").startswith("+OK") and w.cmd("DELE 2").startswith("+OK")
    hold(board, leave, next="pop3", lasting=lasting)
    reply = w.cmd("QUIT")
    w.close()
    w = pop3_login(board.pop3_port)
    after = int(w.cmd("STAT").split()[1])
    assert w.cmd("QUIT") == "+OK Logging out."
    w.close()
    return reply, before, after


def test_a_passing_shortage_anywhere_in_quit_still_deletes(board):
    # The shortage meets QUIT at a different point for each `leave`: before its deletion began,
    # while the journal was written, at its commit, at the index's rewrite. Each time the
    # deletion goes on from where it stopped (a QUIT once answered +OK with nothing deleted:
    # the shortage had come before the journal existed, and going on found nothing to finish).
    for leave in range(0, 1600, 32):
        assert quit_after_deleting_two(board, leave, False)[0::2] == ("+OK Logging out.", 0), leave


def test_quit_that_stays_short_deletes_all_or_nothing_and_says_which(board):
    for leave in range(1040, 1600, 96):  # each short one takes 7.6 s: the retries
        reply, before, after = quit_after_deleting_two(board, leave, True)
        if reply == "+OK Logging out.":
            assert after == before - 2, leave  # room enough, even so
        elif reply == "-ERR [SYS/TEMP] Not enough memory, some deleted messages were not removed yet.":
            assert after == before - 2, leave  # committed: finished when the mailbox is next opened
        else:
            assert (reply, after) == (POP3_NOMEM, before), leave  # nothing deleted
    assert not any("INTERNAL" in line or "Traceback" in line for line in board.lines)


def test_boot_check_short_of_memory_still_serves_and_finishes_later(make_board):
    board = make_board().start()
    board.add_user("alice", "wonderland")
    board.add_user("bob", "builder")
    for i in range(3):
        send_mail(board.smtp_port, "Subject: {}\r\n\r\nbody {}\r\n".format(i, i).encode())
    board.stop()
    # A deletion of message 2 was committed (its journal written) when the power went.
    sd_card.run(board.app_dir, board.data / "sd.img", 'write("/sd/mail/alice/purge", b"00000002\\n")')
    board.options["debug_boot_hold"] = 0
    board.start()
    assert board.wait_log("WARN store: boot check not finished (not enough memory)")
    assert board.wait_log("INFO boot: ready")
    # Alice's mailbox is checked when it is first opened: the deletion is finished first.
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 2 ")
    w.cmd("QUIT")
    assert board.wait_log("WARN store: alice: finished a deletion (1 files)")
    # The rest of the check runs once the board is idle.
    assert board.wait_log("INFO store: boot check finished", timeout=20)
    send_mail(board.smtp_port, b"Subject: after\r\n\r\nafter\r\n", rcpts=("bob@pocketpost.local",))
    assert board.request("mailbox.stats", name="bob")["mailboxes"][0]["messages"] == 1


def test_large_mailbox_boot_check_and_login_fit_the_heap(board):
    """A mailbox of thousands of messages whose index is lost: the boot check rebuilds it in
    memory that does not grow with it, and the login that follows fits."""
    deliver_many(board.smtp_port, 3000)
    board.stop()
    sd_card.run(board.app_dir, board.data / "sd.img", 'os.remove("/sd/mail/alice/index")')
    board.start()
    assert board.wait_log("WARN store: alice: re-indexed 3000 messages from the folders", timeout=30)
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith("+OK 3000 ")
    assert w.cmd("UIDL 3000").split()[1] == "3000"
    w.cmd("QUIT")
    assert not board.log_has("MemoryError")


def test_code_in_place_keeps_the_bytecode_out_of_the_heap(make_board):
    # A frozen (or ROMFS) build runs its modules from flash: the heap holds their functions and
    # names, not their bytecode and constants. The emulated board does the same from a
    # read-only image (boards/unix/in_place.py) and gives the firmware the same heap.
    # (At the unix board's heap: the suites at a smaller one, in place, are below the floor of
    # the board whose code is loaded from files.)
    from_files = make_board(code_in_place=False, heap=firmware.DEFAULT_HEAP).start()
    in_place = make_board(code_in_place=True, heap=firmware.DEFAULT_HEAP).start()
    # Measured: 26,816 octets more on 64-bit, 25,040 on 32-bit.
    assert in_place.ready_free() - from_files.ready_free() > 20000, (in_place.ready_free(), from_files.ready_free())
    in_place.add_user("alice", "wonderland")
    send_mail(in_place.smtp_port, b"Subject: in place\r\n\r\nfrom flash")
    w = pop3_login(in_place.pop3_port)
    assert w.cmd("STAT").startswith("+OK 1 ")
    assert w.cmd("RETR 1").startswith("+OK")
    assert strip_trace(w.multiline()) == b"Subject: in place\r\n\r\nfrom flash\r\n"
    assert w.cmd("QUIT").startswith("+OK")
    w.close()
