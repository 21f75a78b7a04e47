"""TLS (RFC 2595 STLS, RFC 3207 STARTTLS, RFC 8314 implicit TLS) and the login policy around it,
with a real self-signed certificate installed over the console and verified by the clients."""

import base64
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from pocketpost_host import tls as certificates
from pocketpost_host.errors import BoardError

from emulated_board import free_port
from wire import Wire, send_mail


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A certificate for 127.0.0.1 (PEM files for the clients, DER for the board)."""
    folder = tmp_path_factory.mktemp("tls")
    cert_pem, key_pem = certificates.generate("127.0.0.1", days=30)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    cert_der, key_der = certificates.to_der(cert_pem, key_pem)
    return {"pem": folder / "cert.pem", "key_pem": folder / "key.pem", "cert_der": cert_der, "key_der": key_der}


@pytest.fixture
def tls_board(make_board, certificate):
    """A board with alice, a certificate installed, and every TLS port open. It is restarted
    after the installation: a certificate installed while the heap is fragmented loads at the
    next boot, when the context is built before anything else."""
    board = make_board(pop3s_port=free_port(), smtps_port=free_port(), submission_port=free_port()).start()
    board.add_user("alice", "wonderland")
    certificates.install(board.console, certificate["cert_der"], certificate["key_der"])
    board.restart()
    assert board.request("info")["tls"]["certificate"]
    return board


def client_context(certificate):
    context = ssl.create_default_context(cafile=str(certificate["pem"]))
    return context


def plain_auth():
    return base64.b64encode(b"\0alice\0wonderland").decode()


def test_show_and_install_errors(make_board, certificate):
    board = make_board().start()
    with pytest.raises(BoardError) as e:
        board.request("tls.show")
    assert e.value.code == "NOTFOUND"
    # Damaged in transit: the digests do not match and nothing changes.
    board.request("tls.begin")
    board.request("tls.chunk", file="cert", data=base64.b64encode(certificate["cert_der"]).decode())
    board.request("tls.chunk", file="key", data=base64.b64encode(certificate["key_der"]).decode())
    with pytest.raises(BoardError) as e:
        board.request("tls.commit", cert_sha256="00" * 32, key_sha256="00" * 32)
    assert e.value.code == "INVALID" and "damaged" in e.value.board_message
    # Not a certificate at all.
    garbage = b"not a certificate"
    with pytest.raises(BoardError) as e:
        certificates.install(board.console, garbage, certificate["key_der"])
    assert e.value.code == "INVALID"
    with pytest.raises(BoardError) as e:
        board.request("tls.chunk", file="passwd", data="AAAA")
    assert e.value.code == "INVALID"
    assert board.request("info")["tls"] == {"certificate": False, "required_for_auth": False, "sessions": 0, "pending_reboot": False}
    shown = certificates.install(board.console, certificate["cert_der"], certificate["key_der"])
    assert shown["applies"] in ("now", "reboot")
    if "sha256" not in shown:  # installed; the heap had no room for its details in the reply
        shown = board.request("tls.show")
    assert shown["subject"] == "CN=127.0.0.1" and shown["issuer"] == "CN=127.0.0.1"
    assert shown["key"] == "EC"
    assert shown["sha256"] == certificates.fingerprint(certificate["cert_der"])
    assert shown["not_after"] > shown["not_before"]
    applies = shown.pop("applies")
    assert board.request("tls.show") == shown
    if applies == "reboot":  # no room for a context now: it loads at the next boot
        assert board.request("info")["tls"]["certificate"] is False
        assert board.request("info")["tls"]["pending_reboot"] is True
        board.restart()
    else:
        assert applies == "now"
    assert board.request("info")["tls"] == {"certificate": True, "required_for_auth": True, "sessions": 0, "pending_reboot": False}
    # The certificate stays installed across a restart, and the key never comes back out.
    board.restart()
    assert board.request("tls.show") == shown
    assert "key" not in str(board.request("config.get"))


def test_pop3_stls_with_a_verified_certificate(tls_board, certificate):
    send_mail(tls_board.smtp_port, b"Subject: secret\r\n\r\nover TLS")
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)
    before = pop.capa()
    assert "STLS" in before and "USER" not in before and "SASL" not in before
    pop.stls(client_context(certificate))
    after = pop.capa()
    assert "STLS" not in after and "USER" in after and after["SASL"] == ["PLAIN", "LOGIN"]
    pop.user("alice")
    pop.pass_("wonderland")
    _, lines, _ = pop.retr(1)
    assert lines[-1] == b"over TLS"
    pop.quit()


def test_logins_are_refused_before_tls(tls_board):
    w = Wire(tls_board.pop3_port)
    w.line()
    refused = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections."
    assert w.cmd("USER alice") == refused
    assert w.cmd("PASS wonderland") == refused
    assert w.cmd("AUTH PLAIN " + plain_auth()) == refused
    s = Wire(tls_board.smtp_port)
    s.line()
    s.send("EHLO client.example\r\n")
    ehlo = s.smtp_reply()
    assert "250-STARTTLS" in ehlo and not any("AUTH" in line for line in ehlo)
    assert s.cmd("AUTH PLAIN " + plain_auth()) == "538 5.7.11 Encryption required for requested authentication mechanism"


def test_the_policy_can_be_turned_off_and_on(tls_board, make_board):
    tls_board.set_config(require_tls_for_auth="no")
    w = Wire(tls_board.pop3_port)
    w.line()
    assert w.cmd("USER alice") == "+OK Send PASS."
    # "yes" without a certificate leaves no way to log in: the operator asked for it.
    other = make_board().start()
    other.add_user("alice", "wonderland")
    other.set_config(require_tls_for_auth="yes")
    w = Wire(other.pop3_port)
    w.line()
    assert w.cmd("USER alice").startswith("-ERR [AUTH] Plaintext")


def test_smtp_starttls_then_auth(tls_board, certificate):
    smtp = smtplib.SMTP("127.0.0.1", tls_board.smtp_port, timeout=20)
    smtp.ehlo("client.example")
    assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
    smtp.starttls(context=client_context(certificate))
    smtp.ehlo("client.example")
    assert not smtp.has_extn("starttls") and smtp.has_extn("auth")
    smtp.login("alice", "wonderland")
    smtp.sendmail("alice@pocketpost.local", ["alice@pocketpost.local"], b"Subject: via STARTTLS\r\n\r\nhi\r\n")
    smtp.quit()
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)
    pop.stls(client_context(certificate))
    pop.user("alice")
    pop.pass_("wonderland")
    _, lines, _ = pop.retr(1)
    message = b"\r\n".join(lines)
    assert b"with ESMTPSA id" in message
    pop.quit()


def tls_socket(port, certificate):
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return client_context(certificate).wrap_socket(raw, server_hostname="127.0.0.1")


def read_line(sock, buf):
    while b"\r\n" not in buf[0]:
        data = sock.recv(4096)
        if not data:
            raise EOFError(buf[0])
        buf[0] += data
    line, _, buf[0] = buf[0].partition(b"\r\n")
    return line.decode()


def test_a_tls_session_unloads_the_code_a_client_of_the_other_protocol_left(tls_board, certificate):
    # A protocol's code stays loaded 3 s after its last client, for the next one; a TLS session
    # needs that heap more (at 160k curl's AUTH inside STARTTLS, right after its POP3 fetch, was
    # refused for memory while the POP3 code waited).
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)
    pop.quit()
    smtp = smtplib.SMTP("127.0.0.1", tls_board.smtp_port, timeout=20)
    smtp.ehlo("client.example")
    # (Asked here, info would unload it on a heap where info itself runs short: 160k.)
    smtp.starttls(context=client_context(certificate))
    smtp.ehlo("client.example")
    assert tls_board.request("info")["sessions_code"] == ["smtp"]
    smtp.login("alice", "wonderland")
    smtp.quit()


def test_plaintext_injected_before_stls_is_discarded(tls_board, certificate):
    """CVE-2011-0411: commands pipelined after STLS in the clear must not run inside TLS."""
    raw = socket.create_connection(("127.0.0.1", tls_board.pop3_port), timeout=20)
    buf = [b""]
    read_line(raw, buf)
    raw.sendall(b"STLS\r\nCAPA\r\nNOOP\r\n")
    assert read_line(raw, buf) == "+OK Begin TLS negotiation."
    assert buf[0] == b""
    secure = client_context(certificate).wrap_socket(raw, server_hostname="127.0.0.1")
    secure.sendall(b"NOOP\r\n")
    # The first reply inside TLS answers our NOOP: the injected CAPA and NOOP were dropped.
    assert read_line(secure, buf) == "-ERR Command not valid in this state."
    secure.sendall(b"QUIT\r\n")
    assert read_line(secure, buf) == "+OK Logging out."
    secure.close()


def test_plaintext_injected_before_starttls_is_discarded(tls_board, certificate):
    raw = socket.create_connection(("127.0.0.1", tls_board.smtp_port), timeout=20)
    buf = [b""]
    read_line(raw, buf)
    raw.sendall(b"EHLO client.example\r\n")
    while not read_line(raw, buf).startswith("250 "):
        pass
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@pocketpost.local>\r\n")
    assert read_line(raw, buf) == "220 2.0.0 Ready to start TLS"
    secure = client_context(certificate).wrap_socket(raw, server_hostname="127.0.0.1")
    # EHLO was forgotten with everything else: MAIL is out of sequence, not nested.
    secure.sendall(b"MAIL FROM:<bob@example.org>\r\n")
    assert read_line(secure, buf) == "503 5.5.1 Error: send HELO/EHLO first"
    secure.sendall(b"QUIT\r\n")
    assert read_line(secure, buf) == "221 2.0.0 Bye"
    secure.close()


def test_implicit_tls_ports(tls_board, certificate):
    pop = poplib.POP3_SSL("127.0.0.1", tls_board.options["pop3s_port"], context=client_context(certificate), timeout=20)
    assert "STLS" not in pop.capa()
    pop.user("alice")
    pop.pass_("wonderland")
    assert pop.stat() == (0, 0)
    pop.quit()
    smtp = smtplib.SMTP_SSL("127.0.0.1", tls_board.options["smtps_port"], context=client_context(certificate), timeout=20)
    smtp.ehlo("client.example")
    assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
    # Port 465 is for submission: mail only after AUTH (RFC 8314).
    code, message = smtp.mail("alice@pocketpost.local")
    assert (code, message) == (530, b"5.7.0 Authentication required")
    smtp.rset()
    smtp.login("alice", "wonderland")
    smtp.sendmail("alice@pocketpost.local", ["alice@pocketpost.local"], b"Subject: 465\r\n\r\nhi\r\n")
    smtp.quit()


def test_submission_port_requires_auth(tls_board, certificate):
    smtp = smtplib.SMTP("127.0.0.1", tls_board.options["submission_port"], timeout=20)
    smtp.ehlo("client.example")
    assert smtp.mail("alice@pocketpost.local")[0] == 530
    smtp.rset()
    smtp.starttls(context=client_context(certificate))
    smtp.ehlo("client.example")
    smtp.login("alice", "wonderland")
    assert smtp.mail("alice@pocketpost.local")[0] == 250
    # Authenticated or not, nothing is relayed outside the local domains.
    assert smtp.rcpt("friend@example.com")[0] == 550
    smtp.quit()


def test_tls_session_cap(tls_board, certificate):
    tls_board.set_config(tls_max_sessions=1)
    first = tls_socket(tls_board.options["pop3s_port"], certificate)
    buf = [b""]
    assert read_line(first, buf).startswith("+OK")
    w = Wire(tls_board.pop3_port)
    w.line()
    assert w.cmd("STLS") == "-ERR [SYS/TEMP] Too many TLS sessions, try again later."
    s = Wire(tls_board.smtp_port)
    s.line()
    s.send("EHLO client.example\r\n")
    s.smtp_reply()
    assert s.cmd("STARTTLS") == "454 4.7.0 TLS not available due to temporary reason"
    # An implicit-TLS client beyond the cap is closed before any handshake.
    raw = socket.create_connection(("127.0.0.1", tls_board.options["smtps_port"]), timeout=10)
    assert raw.recv(100) == b""
    raw.close()
    # The refusals took no place. (The SMTP client leaves first: at the 160k floor the console's
    # info does not fit beside a TLS session and both protocols' code, and answers NOMEM until
    # a protocol's code can be unloaded; docs/memory.md.)
    s.close()
    assert tls_board.request("info")["tls"]["sessions"] == 1
    first.sendall(b"QUIT\r\n")
    read_line(first, buf)
    first.close()
    time.sleep(0.3)
    assert tls_board.request("info")["tls"]["sessions"] == 0
    assert w.cmd("STLS") == "+OK Begin TLS negotiation."


def test_no_tls_sessions_allowed_means_none_offered(tls_board):
    """tls_max_sessions 0: STLS and STARTTLS are not advertised, and the "auto" policy does not
    ask for a TLS nobody could get."""
    tls_board.set_config(tls_max_sessions=0)
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)
    assert "STLS" not in pop.capa()
    pop.user("alice")
    pop.pass_("wonderland")
    pop.quit()
    s = Wire(tls_board.smtp_port)
    s.line()
    s.send("EHLO client.example\r\n")
    ehlo = s.smtp_reply()
    assert not any("STARTTLS" in line for line in ehlo) and any("AUTH PLAIN LOGIN" in line for line in ehlo)
    assert s.cmd("STARTTLS") == "502 5.5.1 Error: STARTTLS is not available"


def test_a_board_can_serve_only_implicit_tls_and_submission(make_board, certificate):
    """pop3_port and smtp_port 0: the plain ports are off, POP3S and submission serve."""
    board = make_board(pop3_port=0, smtp_port=0, pop3s_port=free_port(), submission_port=free_port()).start()
    board.add_user("alice", "wonderland")
    certificates.install(board.console, certificate["cert_der"], certificate["key_der"])
    board.restart()
    listening = [line for line in board.lines if " listening on " in line]
    assert not any(line.endswith(":0") for line in listening)
    assert sorted(line.split(" INFO ")[1].split(":")[0] for line in listening[-2:]) == ["pop3", "smtp"]
    assert all(line.endswith("(TLS)") or line.endswith("(submission)") for line in listening[-2:])
    assert board.request("info")["ports"] == {"pop3": 0, "smtp": 0}
    board.set_config(pop3_port=0, smtp_port=0)  # what a real board is told (here the command line says it)
    smtp = smtplib.SMTP("127.0.0.1", board.options["submission_port"], timeout=20)
    smtp.starttls(context=client_context(certificate))
    smtp.login("alice", "wonderland")
    smtp.sendmail("alice@pocketpost.local", ["alice@pocketpost.local"], b"Subject: tls only\r\n\r\nsubmitted")
    smtp.quit()
    pop = poplib.POP3_SSL("127.0.0.1", board.options["pop3s_port"], context=client_context(certificate), timeout=20)
    pop.user("alice")
    pop.pass_("wonderland")
    assert pop.retr(1)[1][-1] == b"submitted"
    pop.quit()


def test_handshake_timeout(tls_board):
    tls_board.set_config(tls_handshake_timeout=5)
    raw = socket.create_connection(("127.0.0.1", tls_board.options["pop3s_port"]), timeout=20)
    start = time.monotonic()
    raw.settimeout(20)
    assert raw.recv(100) == b""  # closed without a handshake
    assert 4 <= time.monotonic() - start <= 12
    raw.close()
    assert tls_board.request("info")["tls"]["sessions"] == 0


def test_curl_with_ssl_reqd_verifies_the_certificate(tls_board, certificate):
    curl = shutil.which("curl")
    assert curl, "curl is missing: apt-get install curl"
    send_mail(tls_board.smtp_port, b"Subject: for curl\r\n\r\nverified")
    listed = subprocess.run(
        [curl, "-sS", "--ssl-reqd", "--cacert", str(certificate["pem"]),
         "pop3://127.0.0.1:{}/1".format(tls_board.pop3_port), "-u", "alice:wonderland"],
        capture_output=True, timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.endswith(b"verified\r\n")
    message = b"Subject: curl smtp\r\n\r\nsent over STARTTLS\r\n"
    sent = subprocess.run(
        [curl, "-sS", "--ssl-reqd", "--cacert", str(certificate["pem"]), "smtp://127.0.0.1:{}".format(tls_board.smtp_port),
         "-u", "alice:wonderland", "--mail-from", "alice@pocketpost.local", "--mail-rcpt", "alice@pocketpost.local", "-T", "-"],
        input=message, capture_output=True, timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    # Without the CA, curl refuses the self-signed certificate: verification really happened.
    unverified = subprocess.run(
        [curl, "-sS", "--ssl-reqd", "pop3://127.0.0.1:{}/".format(tls_board.pop3_port), "-u", "alice:wonderland"],
        capture_output=True, timeout=30,
    )
    assert unverified.returncode == 60, unverified.stderr  # CURLE_PEER_FAILED_VERIFICATION


@pytest.mark.memory
@pytest.mark.parametrize("where", ["tls", "handshake"])
def test_implicit_tls_short_of_memory_closes_that_client_only(tls_board, certificate, where):
    """A shortage as a POP3S client's TLS socket is made, or in its handshake and greeting:
    nothing can be said before TLS is up, so that client's connection closes, with a log line
    and its TLS place given back; the port and the other clients go on."""
    tls_board.set_config(require_tls_for_auth="no")
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)  # a plaintext client, meanwhile
    pop.user("alice")
    pop.pass_("wonderland")
    tls_board.request("debug.hold", leave=0, next=where)
    raw = socket.create_connection(("127.0.0.1", tls_board.options["pop3s_port"]), timeout=20)
    got = b""
    try:
        wrapped = client_context(certificate).wrap_socket(raw, server_hostname="127.0.0.1")
        try:
            got = wrapped.recv(100)
        finally:
            wrapped.close()
    except (ssl.SSLError, OSError):
        pass  # closed before or during the handshake
    finally:
        raw.close()
    # Closed with nothing said, or (short after a handshake that went through) with the
    # temporary error, inside TLS.
    assert got in (b"", b"-ERR [SYS/TEMP] Not enough memory, try again later.\r\n"), got
    if where == "tls":
        assert tls_board.wait_log("WARN pop3: 127.0.0.1 refused: no memory for TLS")
    else:
        assert tls_board.wait_log("WARN pop3: 127.0.0.1 session closed: not enough memory")
    time.sleep(0.3)
    assert tls_board.request("info")["tls"]["sessions"] == 0  # the place given back
    assert pop.stat()[0] == 0 and pop.quit().startswith(b"+OK")  # the other client went on
    pop = poplib.POP3_SSL("127.0.0.1", tls_board.options["pop3s_port"], context=client_context(certificate), timeout=20)
    pop.user("alice")
    pop.pass_("wonderland")
    assert pop.quit().startswith(b"+OK")
    assert not tls_board.log_has("Traceback") and not tls_board.log_has("INTERNAL")


@pytest.mark.memory
def test_stls_and_starttls_short_of_memory_are_temporary_errors(tls_board, certificate):
    """A shortage as STLS or STARTTLS starts: a temporary error (or, once the go-ahead has
    left, the connection closed), the TLS place given back, and the next try works."""
    tls_board.set_config(require_tls_for_auth="no")
    w = Wire(tls_board.pop3_port)
    w.line()
    tls_board.request("debug.hold", leave=0, next="pop3")
    reply = w.cmd("STLS")
    if reply == "-ERR [SYS/TEMP] Not enough memory, try again later.":
        # Short before the go-ahead left: the session goes on, and keeps the place it took.
        assert tls_board.request("info")["tls"]["sessions"] == 1
        assert w.cmd("CAPA").startswith("+OK")
        w.multiline()
    else:
        # Short as the TLS socket is made, after the go-ahead left: the connection closes.
        assert reply == "+OK Begin TLS negotiation."
        assert w.closed()
        assert tls_board.wait_log("WARN pop3: 127.0.0.1 not enough memory for a command, closing")
    w.close()
    # The POP3 code unloaded first: left idle, STARTTLS would unload it (Session.begin_tls) and
    # the TLS socket would find its room despite the shortage.
    tls_board.settled_heap()
    s = Wire(tls_board.smtp_port)
    s.line()
    s.send("EHLO client.example\r\n")
    s.smtp_reply()
    tls_board.request("debug.hold", leave=0, next="smtp")
    reply = s.cmd("STARTTLS")
    if reply == "451 4.3.0 Not enough memory, try again later":
        # Short before the go-ahead left: a temporary error, and the session goes on.
        assert s.cmd("NOOP").startswith("250")
        s.cmd("QUIT")
    else:
        # Short as the TLS socket is made, after the go-ahead left: nothing more can be said in
        # plaintext, so the connection closes (the client's handshake fails, it tries again).
        assert reply == "220 2.0.0 Ready to start TLS"
        assert s.closed()
        assert tls_board.wait_log("WARN smtp: 127.0.0.1 not enough memory for a command, closing")
    time.sleep(0.3)
    assert tls_board.request("info")["tls"]["sessions"] == 0  # both places given back
    # Afterwards, TLS sessions as before.
    pop = poplib.POP3("127.0.0.1", tls_board.pop3_port, timeout=20)
    pop.stls(client_context(certificate))
    pop.user("alice")
    pop.pass_("wonderland")
    pop.quit()
    assert not tls_board.log_has("Traceback")
