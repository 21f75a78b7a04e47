"""The collector (issue 13): each user's accounts at an outside provider, polled over POP3S with
a certificate the board verifies, delivered into the user's local mailbox once, against Dovecot
on loopback (and small fake POP3 servers for what Dovecot will not do: no UIDL, a wrong name)."""

import os
import poplib
import random
import re
import socketserver
import ssl
import threading
import time

import pytest

import sd_card
from emulated_board import wait_until
import smarthost
from pocketpost_host import relay as host_relay
from pocketpost_host.errors import BoardError
from reference_servers import ReferenceServers, free_port
from wire import pop3_login, unstuff

PASSWORD = "provider-secret-42"
LOGIN = "alice"

# Messages as they lie in the provider's Maildir (LF line ends: Dovecot's own); RETR sends them
# with CRLF, dot-stuffed. Dots at line starts, a lone dot, a long line, 8-bit octets, an empty
# line at the end.
MESSAGES = [
    b"From: Bob <bob@example.org>\nTo: Alice <alice@provider.test>\nSubject: one\n\nHello Alice.\n",
    b"From: Carol <carol@example.net>\nTo: alice@provider.test\nSubject: dots\n\n.leading dot\n..two dots\n.\nend\n",
    b"From: Dave <dave@example.com>\nSubject: long\nContent-Type: text/plain; charset=latin1\n\n"
    + b"x" * 3000 + b"\n\xe9t\xe9\n\n",
]


def crlf(message):
    return message.replace(b"\n", b"\r\n")


class Provider(ReferenceServers):
    """Dovecot serving POP3 (with STLS) and POP3S with a certificate for `hostname`, the
    account alice / PASSWORD; messages are put straight into its Maildir."""

    def __init__(self, cert, key, **kwargs):
        super().__init__(user=LOGIN, password=PASSWORD, domain="provider.test", **kwargs)
        self.cert = cert
        self.key = key
        self.pop3s_port = free_port()
        self.count = 0

    def _prepare(self):
        owner = super()._prepare()
        conf = self.dir / "dovecot.conf"
        text = conf.read_text()
        text = text.replace("ssl = no\n", f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{self.key}\nauth_verbose = yes\n")
        text = text.replace("inet_listener pop3s {\n    port = 0\n  }",
                            f"inet_listener pop3s {{\n    address = 127.0.0.1\n    port = {self.pop3s_port}\n    ssl = yes\n  }}")
        conf.write_text(text)
        return owner

    def put(self, message):
        """Puts a message (LF line ends) into the provider's mailbox."""
        self.count += 1
        name = f"{time.time_ns()}.M{self.count}.provider"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(message)
        owner = self.smtp.handler.owner
        if owner is not None:
            import os

            os.chown(tmp, *owner)
        tmp.rename(self.maildir / "new" / name)

    def remaining(self):
        return sum(1 for sub in ("new", "cur") for _ in (self.maildir / sub).iterdir())

    def logins(self):
        """Lines of Dovecot's log that record a login attempt by our user."""
        return [line for line in self.log_lines() if "user=<alice>" in line and "pop3-login" in line]

    def log_lines(self):
        log = self.dir / "dovecot.log"
        return log.read_text("utf-8", "replace").splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collectcerts")
    import os

    os.chmod(folder, 0o755)  # Dovecot's config process reads them (as root: any folder)
    return {"good": smarthost.make_certificate(folder, "localhost"),
            "other": smarthost.make_certificate(folder, "other.example")}


@pytest.fixture
def provider(certs):
    with Provider(certs["good"][0], certs["good"][1]) as p:
        yield p


def collector_board(make_board, certs, ca="good", heap=None, **settings):
    board = (make_board(heap=heap) if heap else make_board()).start()
    board.add_user("alice", "wonderland")
    values = dict(collect_time_scale=1000, collect_timeout=10)
    values.update(settings)
    board.set_config(**values)
    if ca:
        if host_relay.install_ca(board.console, certs[ca][2])["applies"] == "reboot":
            board.restart()
    return board


def add_account(board, port, wait=True, **fields):
    """Adds (or changes) an account, which the board polls at once; with `wait`, waits for that
    poll to end (a console request beside a poll may meet a short heap: the poll is then made
    again a minute later)."""
    args = dict(user="alice", host="localhost", port=port, security="tls", login=LOGIN, password=PASSWORD)
    args.update(fields)
    before = len(board.lines)
    added = board.request("collect.add", **args)
    if wait:  # (a poll that ran short is made again ten seconds later: that one is waited for)
        pattern = re.compile(rf"(INFO|WARN) collect: {added['id']} \S+ for ")
        ended = lambda: any(pattern.search(line) and not line.endswith(SHORT) for line in board.lines[before:])
        assert wait_until(ended, 45), "\n".join(board.lines[-20:])
    return added


def account(board, aid):
    return next(a for a in board.request("collect.list")["accounts"] if a["id"] == aid)


def polls(board, aid):
    """The console lines that end a poll of account `aid` (one per poll)."""
    return [line for line in board.lines if re.search(rf"(INFO|WARN) collect: {aid} \S+ for ", line)]


SHORT = "not enough memory now (polled again soon)"


def poll_now(board, aid, timeout=30):
    """Asks for a poll of account `aid` and waits for it to end (its log line); returns the
    account as collect.list shows it then. A poll that ran short of the board's memory (after
    its retries) is a temporary condition, logged, and the account is polled again ten seconds
    later: then its next poll is waited for."""
    before = len(polls(board, aid))
    board.request("collect.now", id=aid)
    for _ in range(3):
        assert wait_until(lambda: len(polls(board, aid)) > before, timeout), "\n".join(board.lines[-30:])
        if not polls(board, aid)[-1].endswith(SHORT):
            break
        before = len(polls(board, aid))
    return account(board, aid)


def mailbox(board, user="alice", password="wonderland"):
    """Every message in the user's local mailbox, byte-exact (POP3 RETR, unstuffed)."""
    w = pop3_login(board.pop3_port, user, password)
    count = int(w.cmd("STAT").split()[1])
    out = []
    for n in range(1, count + 1):
        assert w.cmd(f"RETR {n}").startswith("+OK")
        out.append(unstuff(w.multiline()))
    w.cmd("QUIT")
    w.close()
    return out


TRACE = re.compile(
    rb"^Received: from localhost\r\n\tby pocketpost \(pocketpost\) with POP3S\r\n"
    rb"\tfor <alice@pocketpost\.local>;\r\n\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
)


def split_trace(message):
    m = TRACE.match(message)
    assert m, message[:300]
    return message[m.end():]


def test_messages_arrive_byte_exact_over_verified_pop3s_once(make_board, certs, provider):
    for message in MESSAGES:
        provider.put(message)
    board = collector_board(make_board, certs)
    added = add_account(board, provider.pop3s_port)
    assert added["password"] == "********" and added["keep"] is True and added["interval"] == 30
    aid = added["id"]
    shown = account(board, aid)  # polled when added
    assert re.match(r"ok: 3 listed, [1-3] new", shown["result"]), shown  # (a poll that ran short is made again at once: fewer new then)
    assert shown["fetched"] == 3
    got = mailbox(board)
    assert sorted(split_trace(m) for m in got) == sorted(crlf(m) for m in MESSAGES)
    # Kept on the provider (the default), and a second poll fetches nothing.
    assert provider.remaining() == 3
    again = poll_now(board, aid)
    assert again["result"].startswith("ok: 3 listed, 0 new"), again
    assert again["fetched"] == 0 and again["fetched_total"] == 3
    assert len(mailbox(board)) == 3
    # One log line per poll; the password nowhere in the console's output.
    assert board.wait_log(f"INFO collect: {aid} alice@localhost:{provider.pop3s_port} for alice: 3 fetched, 0 deleted; ok")
    assert not any(PASSWORD in line for line in board.lines)
    info = board.request("info")["collect"]
    assert info[0]["id"] == aid and info[0]["fetched_total"] == 3 and info[0]["result"].startswith("ok")
    assert 0 < info[0]["next_s"] <= 1800


class FakePop3:
    """A small POP3 server on loopback (implicit TLS with `context`) that records every line it
    receives after the handshake. `uidl`: whether UIDL works; `capa`: the CAPA lines (None: no
    CAPA). `on_dele(n)` is called when DELE n arrives."""

    def __init__(self, messages=(), context=None, uidl=True, capa=("USER", "UIDL"), on_dele=None):
        self.messages = list(messages)  # (uidl, bytes with CRLF)
        self.context = context
        self.uidl = uidl
        self.capa = capa
        self.on_dele = on_dele
        self.lines = []
        self.handshake_errors = []
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self):
                if fake.context is not None:
                    try:
                        self.request = fake.context.wrap_socket(self.request, server_side=True)
                    except (ssl.SSLError, OSError) as e:
                        fake.handshake_errors.append(str(e))
                        raise
                super().setup()

            def handle(self):
                fake.session(self.rfile, self.wfile)

            def finish(self):
                super().finish()
                self.request.close()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # a refused handshake: recorded above

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def session(self, rfile, wfile):
        def send(text):
            wfile.write(text if isinstance(text, bytes) else text.encode() + b"\r\n")
            wfile.flush()

        send("+OK fake POP3 ready")
        deleted = set()
        for _ in range(1000):
            raw = rfile.readline(1000)
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            self.lines.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "CAPA" and self.capa is not None:
                send("+OK\r\n" + "".join(c + "\r\n" for c in self.capa) + ".")
            elif verb in ("USER", "PASS"):
                send("+OK")
            elif verb == "UIDL" and self.uidl:
                send("+OK\r\n" + "".join(f"{i + 1} {u}\r\n" for i, (u, _) in enumerate(self.messages)) + ".")
            elif verb == "LIST" and arg:
                send(f"+OK {arg} {len(self.messages[int(arg) - 1][1])}")
            elif verb == "RETR":
                body = self.messages[int(arg) - 1][1]
                stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n"))
                send(b"+OK\r\n" + stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            elif verb == "DELE":
                if self.on_dele is not None:
                    self.on_dele(int(arg))
                deleted.add(int(arg))
                send("+OK")
            elif verb == "QUIT":
                self.messages = [m for i, m in enumerate(self.messages) if i + 1 not in deleted]
                send("+OK bye")
                return
            else:
                send("-ERR unknown command")


def test_keep_off_deletes_on_the_provider_only_after_the_message_is_stored(make_board, certs, provider):
    for message in MESSAGES:
        provider.put(message)
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3s_port, keep=False)["id"]
    shown = wait_until(lambda: polls(board, aid)) and account(board, aid)
    assert re.match(r"ok: 3 listed, [1-3] new", shown["result"]), shown
    assert shown["fetched"] == 3 and shown["deleted"] == 3
    assert provider.remaining() == 0
    assert sorted(split_trace(m) for m in mailbox(board)) == sorted(crlf(m) for m in MESSAGES)
    # Each DELE came after its message was in the local mailbox (a fake provider that looks).
    seen = []
    with open(certs["good"][0], "rb"):
        pass
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs["good"][0]), str(certs["good"][1]))

    def on_dele(n):
        # (The console, not a POP3 session: a client's session would stop the poll.)
        seen.append((n, board.request("mailbox.stats", name="alice")["mailboxes"][0]["messages"]))

    fresh = [(f"fake-{i}", crlf(MESSAGES[i % 3]).replace(b"Subject: ", f"Subject: fake {i} ".encode())) for i in range(3)]
    with FakePop3(fresh, context=context, on_dele=on_dele) as fake:
        fake_id = add_account(board, fake.port, keep=False, login="other")["id"]
        assert wait_until(lambda: polls(board, fake_id)), "\n".join(board.lines[-20:])
        assert re.match(r"ok: 3 listed, [1-3] new", account(board, fake_id)["result"])
        # At each DELE n, message n was already in the mailbox (3 before it), whatever retries.
        assert seen and all(count >= 3 + n for n, count in seen), seen
        assert sorted({n for n, _ in seen}) == [1, 2, 3]
        assert fake.messages == []
    assert [split_trace(m) for m in mailbox(board)[3:]] == [m for _, m in fresh]


def test_delete_after_n_days_counts_from_the_first_fetch(make_board, certs, provider):
    for message in MESSAGES[:2]:
        provider.put(message)
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3s_port, keep=True, delete_days=2)["id"]
    assert wait_until(lambda: polls(board, aid))
    assert account(board, aid)["fetched"] == 2 and provider.remaining() == 2
    board.request("collect.clock", advance_s=86400)  # a day later: kept
    provider.put(MESSAGES[2])
    shown = poll_now(board, aid)
    assert (shown["fetched"], shown["deleted"], provider.remaining()) == (1, 0, 3)
    board.request("collect.clock", advance_s=86400 + 3600)  # two days after the first two (kept by the hour)
    shown = poll_now(board, aid)
    assert (shown["fetched"], shown["deleted"], provider.remaining()) == (0, 2, 1)
    # The next poll forgets their UIDLs (the provider no longer lists them), keeps the third.
    shown = poll_now(board, aid)
    assert shown["result"] == "ok: 1 listed, 0 new, 0 left on the provider, 2 forgotten", shown
    board.request("collect.clock", advance_s=86400 + 3600)
    shown = poll_now(board, aid)
    assert (shown["fetched"], shown["deleted"], provider.remaining()) == (0, 1, 0)
    assert sorted(split_trace(m) for m in mailbox(board)) == sorted(crlf(m) for m in MESSAGES)


def test_stls_on_the_plain_port(make_board, certs, provider):
    provider.put(MESSAGES[1])
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3_port, security="stls")["id"]
    assert wait_until(lambda: polls(board, aid))
    shown = account(board, aid)
    assert shown["result"].startswith("ok: 1 listed, 1 new"), shown  # (one message: no partial retry)
    assert [split_trace(m) for m in mailbox(board)] == [crlf(MESSAGES[1])]


def test_without_the_ca_nothing_is_sent(make_board, certs, provider):
    provider.put(MESSAGES[0])
    board = collector_board(make_board, certs, ca=None)
    aid = add_account(board, provider.pop3s_port)["id"]
    assert wait_until(lambda: polls(board, aid))
    shown = account(board, aid)
    assert shown["result"] == "no CA certificate installed to verify the server (pocketpost relay ca install) (no connection made)"
    assert board.wait_log(f"WARN collect: {aid} alice@localhost:{provider.pop3s_port} for alice: 0 fetched, 0 deleted; no CA certificate")
    assert provider.logins() == []
    assert mailbox(board) == []


@pytest.mark.parametrize("case", ["wrong name", "not signed by the CA"])
def test_an_unverified_certificate_gets_no_login(make_board, certs, case):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs["other"][0]), str(certs["other"][1]))
    # A wrong name: the CA installed is the server's own certificate, made for other.example.
    board = collector_board(make_board, certs, ca="other" if case == "wrong name" else "good")
    with FakePop3([("u1", b"Subject: x\r\n\r\nx\r\n")], context=context) as fake:
        aid = add_account(board, fake.port)["id"]
        assert wait_until(lambda: polls(board, aid))
        result = account(board, aid)["result"]
        assert result.startswith(f"localhost:{fake.port}: ") and result.endswith("(no login sent)"), result
        assert "VERIFY" in result.upper() or "CERT" in result.upper(), result
        assert fake.lines == []  # not a line after the handshake: no USER, no PASS
    assert board.wait_log(f"WARN collect: {aid} alice@localhost:{fake.port} for alice: 0 fetched, 0 deleted; localhost:{fake.port}: ")
    assert mailbox(board) == []


def test_a_provider_without_uidl_is_refused(make_board, certs):
    board = collector_board(make_board, certs, ca=None)
    message = [("u1", b"Subject: x\r\n\r\nx\r\n")]
    refused = "the provider does not support UIDL (RFC 1939), which the collector needs to fetch each message once: refused"
    # CAPA without UIDL: refused before the login.
    with FakePop3(message, capa=("USER", "TOP"), uidl=False) as fake:
        aid = add_account(board, fake.port, security="plain")["id"]
        assert wait_until(lambda: polls(board, aid))
        assert account(board, aid)["result"] == refused
        assert fake.lines == ["CAPA", "QUIT"]
    # No CAPA at all: UIDL itself fails after the login.
    with FakePop3(message, capa=None, uidl=False) as fake:
        aid = add_account(board, fake.port, security="plain", login="other")["id"]
        assert wait_until(lambda: polls(board, aid))
        assert account(board, aid)["result"] == refused + " (-ERR unknown command)"
        assert [line.split()[0] for line in fake.lines] == ["CAPA", "USER", "PASS", "UIDL", "QUIT"]
    assert mailbox(board) == []
    assert board.wait_log(f"WARN collect: {aid} other@localhost:{fake.port} for alice: 0 fetched, 0 deleted; {refused}")


def test_a_wrong_password_is_logged_and_tried_once_an_interval(make_board, certs, provider):
    provider.put(MESSAGES[0])
    board = collector_board(make_board, certs, collect_time_scale=10)  # 5 minutes: 3 s
    aid = add_account(board, provider.pop3s_port, password="wrong-password", interval=5)["id"]
    assert wait_until(lambda: polls(board, aid))
    start = time.monotonic()
    assert account(board, aid)["result"].startswith("login refused by localhost: -ERR [AUTH]"), account(board, aid)
    # Retried at the next interval (Dovecot makes a login after failed ones wait a little).
    assert wait_until(lambda: len(polls(board, aid)) >= 3, 30), polls(board, aid)
    attempts = polls(board, aid)
    elapsed = time.monotonic() - start
    # The first poll, then one every 3 s at most: no retry storm, no lock-out.
    assert len(attempts) <= 2 + elapsed / 3, attempts
    assert all("0 fetched, 0 deleted; login refused by localhost: -ERR [AUTH]" in line for line in attempts)
    assert len(provider.logins()) <= len(attempts) + 1
    assert not any("wrong-password" in line for line in board.lines + provider.log_lines())
    # The right password (the same account changed): the next poll fetches.
    add_account(board, provider.pop3s_port, interval=5)
    assert wait_until(lambda: account(board, aid)["fetched_total"] == 1, 15)
    assert [split_trace(m) for m in mailbox(board)] == [crlf(MESSAGES[0])]


def test_size_limit_leaves_larger_messages_on_the_provider(make_board, certs, provider):
    for message in MESSAGES:
        provider.put(message)
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3s_port, keep=False, max_size=1000)["id"]
    assert wait_until(lambda: polls(board, aid))
    shown = account(board, aid)
    assert re.match(r"ok: 3 listed, [1-3] new, 1 left on the provider, 0 forgotten", shown["result"]), shown
    assert provider.remaining() == 1
    assert board.wait_log(f"WARN collect: {aid}: message 3 of {len(crlf(MESSAGES[2]))} octets is over the limit of 1000: left on the provider")
    assert sorted(split_trace(m) for m in mailbox(board)) == sorted(crlf(m) for m in MESSAGES[:2])


def test_accounts_are_checked_and_the_password_never_shown(make_board, certs):
    board = collector_board(make_board, certs, ca=None)
    for args, message in [
        (dict(user="nobody"), "no user nobody"),
        (dict(host="bad host"), "host must be a host name"),
        (dict(security="ssl"), "security must be one of tls"),
        (dict(interval=4), "interval must be an integer 5..1440"),
        (dict(login="two words"), "login must be 1..255 characters"),
        (dict(password=""), "password must be 1..255 characters"),
    ]:
        with pytest.raises(BoardError) as e:
            add_account(board, 995, **args)
        assert message in e.value.board_message
    added = add_account(board, 1, security="plain", password="pass with spaces")
    assert added["created"] and added["password"] == "********"
    changed = add_account(board, 1, security="plain", interval=60)
    assert not changed["created"] and changed["id"] == added["id"] and changed["interval"] == 60
    assert [a["id"] for a in board.request("collect.list")["accounts"]] == [added["id"]]
    assert board.request("collect.del", id=added["id"]) == {"id": added["id"]}
    assert board.request("collect.list")["accounts"] == []
    with pytest.raises(BoardError) as e:
        board.request("collect.del", id=added["id"])
    assert e.value.code == "NOTFOUND"
    assert "collect" not in board.request("info")
    assert not any("pass with spaces" in line or PASSWORD in line for line in board.lines)


class Pop3(poplib.POP3):
    """poplib's client, closing its socket when the greeting is an error."""

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except poplib.error_proto:
            self.file.close()
            self.sock.close()
            raise


def subjects(messages):
    return [re.search(rb"\r\nSubject: ([^\r]*)\r\n", m).group(1).decode() for m in messages]


def read_state(board, aid):
    """The account's state file on the card (the board stopped): its lines."""
    out = sd_card.run(board.app_dir, board.data / "sd.img", f"""
import sys
for name in sorted(n for n, *_ in os.ilistdir("/sd/collect")):
    print("FILE", name)
sys.stdout.write(read("/sd/collect/{aid}.UID").decode())
""")
    files = [line[5:] for line in out.splitlines() if line.startswith("FILE ")]
    return files, [line for line in out.splitlines() if not line.startswith("FILE ")]


@pytest.mark.memory
@pytest.mark.parametrize("keep", [True, False])
def test_power_cuts_during_polls_lose_nothing(make_board, certs, provider, keep):
    """SIGKILL at random moments while the board polls: every message arrives, at most one
    more than once per cut, the provider's copies go only once stored (keep off), and the state
    file is always whole."""
    count = 24
    for i in range(count):
        provider.put(f"From: bulk@example.org\nSubject: cut {i}\n\n".encode() + b"0123456789abcdef" * 4000 + b"\n")
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3s_port, wait=False, keep=keep)["id"]
    rng = random.Random(13 if keep else 14)
    cuts = 0
    for _ in range(6):
        time.sleep(rng.uniform(0.05, 0.6))
        board.kill()
        cuts += 1
        board.start()  # the poll starts again at boot
    assert wait_until(lambda: any(" ok: " in line for line in polls(board, aid)[-1:]), 60), "\n".join(board.lines[-30:])
    got = subjects(split_trace(m) for m in mailbox(board))
    counts = {f"cut {i}": got.count(f"cut {i}") for i in range(count)}
    assert all(n >= 1 for n in counts.values()), counts
    assert len(got) - count <= cuts, counts  # at most one duplicate per cut
    shown = poll_now(board, aid)
    assert shown["result"] == f"ok: {0 if not keep else count} listed, 0 new, 0 left on the provider, 0 forgotten", shown
    assert provider.remaining() == (count if keep else 0)
    assert not any("Traceback" in line for line in board.lines)
    board.stop()
    files, lines = read_state(board, aid)
    assert files == [f"{aid}.UID"]
    assert lines[0] == "pocketpost-collect 1" and lines[-1] == "end"
    entries = [line.split(" ") for line in lines[1:-1]]
    assert all(len(e) == 2 and e[0].isdigit() for e in entries)
    assert len(entries) == (count if keep else 0)  # (with keep off, forgotten once deleted)
    assert len({e[1] for e in entries}) == len(entries)


def unheld(info):
    """The heap free, and the reserve held for a shortage (given up in one, taken back after)."""
    return info["heap_free"] + info["heap_reserve"]


@pytest.mark.memory
def test_thousands_kept_on_the_provider_cost_no_heap_per_message(make_board, certs, provider):
    """3,000 messages kept on the provider (the default): the state is read from the card, not
    held, so every poll fits the suite's heap; the next poll fetches nothing, and the UIDLs of
    the messages removed on the provider are forgotten."""
    count = 3000
    for i in range(count):
        provider.put(f"From: list@example.org\nSubject: kept {i}\n\nmessage {i}\n".encode())
    board = collector_board(make_board, certs)
    aid = add_account(board, provider.pop3s_port, wait=False)["id"]
    # (Watched in the log: console requests beside a poll may meet a short heap.)
    assert wait_until(lambda: any(" ok: " in line for line in polls(board, aid)), 300), "\n".join(board.lines[-20:])
    assert account(board, aid)["fetched_total"] == count
    idle = unheld(board.request("info"))
    again = poll_now(board, aid, timeout=120)
    assert again["result"] == f"ok: {count} listed, 0 new, 0 left on the provider, 0 forgotten", again
    gone = sorted((provider.maildir / "cur").iterdir())[:100]
    for path in gone:
        path.unlink()
    provider.put(b"From: list@example.org\nSubject: one more\n\nlate\n")
    again = poll_now(board, aid, timeout=120)
    assert again["result"] == f"ok: {count - 99} listed, 1 new, 0 left on the provider, 100 forgotten", again
    w = pop3_login(board.pop3_port)
    assert w.cmd("STAT").startswith(f"+OK {count + 1} ")  # each once
    w.cmd("QUIT")
    again = poll_now(board, aid, timeout=120)
    assert again["result"] == f"ok: {count - 99} listed, 0 new, 0 left on the provider, 0 forgotten", again
    assert unheld(board.request("info")) >= idle - 2048  # nothing a message stays behind
    board.stop()
    files, lines = read_state(board, aid)
    assert files == [f"{aid}.UID"] and len(lines) == count - 99 + 2


@pytest.mark.memory
def test_a_poll_beside_four_clients(make_board, certs, provider):
    """A poll fetching 40 messages of 64 KB while four LAN clients deliver and fetch: no client
    meets a shortage, nothing is lost, and the heap is back after."""
    import smtplib

    for i in range(40):
        provider.put(f"From: bulk@example.org\nSubject: big {i}\n\n".encode() + b"abcdefghijklmnop" * 4000 + b"\n")
    # Measured: at the suite's heap (176k, 64-bit) a client arriving while the poll's code and
    # TLS session are in the heap may hear "[SYS/TEMP] Not enough memory" (184k too); from 192k
    # on, no client meets a shortage. The poll yields to clients between messages.
    board = collector_board(make_board, certs, heap=os.environ.get("POCKETPOST_COLLECT_HEAP", "192k"))
    for user in ("bob", "carol", "dave"):
        board.add_user(user, "secret-" + user)
    idle = board.request("info")
    aid = add_account(board, provider.pop3s_port, wait=False)["id"]
    assert board.wait_log(f"INFO collect: {aid}: message 1 delivered", 30)
    errors = []

    busy = []  # a session refused because the one before has not given its place back yet

    def sender(rcpt, n):
        try:
            for i in range(n):
                for _ in range(50):
                    try:
                        s = smtplib.SMTP("127.0.0.1", board.smtp_port, timeout=30)
                        break
                    except smtplib.SMTPConnectError as e:
                        assert e.smtp_code == 421 and b"Too many connections" in e.smtp_error
                        busy.append(e)
                        time.sleep(0.1)
                with s:
                    s.sendmail("x@example.org", [rcpt], f"Subject: lan {i}\r\n\r\n".encode() + (b"z" * 76 + b"\r\n") * 260 + b"\r\n")
                time.sleep(0.05)  # (a closed session's place is free a moment after its QUIT)
        except Exception as e:
            errors.append(repr(e))

    def reader(user, n):
        try:
            for _ in range(n):
                for _ in range(50):
                    try:
                        p = Pop3("127.0.0.1", board.pop3_port, timeout=30)
                        break
                    except poplib.error_proto as e:
                        assert e.args[0] == b"-ERR [SYS/TEMP] Too many clients, try again later.", e
                        busy.append(e)
                        time.sleep(0.1)
                try:
                    p.user(user)
                    p.pass_("secret-" + user)
                    for k in range(len(p.list()[1])):
                        p.retr(k + 1)
                    p.quit()
                finally:
                    p.close()
                time.sleep(0.05)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=sender, args=("bob@pocketpost.local", 8)),
               threading.Thread(target=sender, args=("carol@pocketpost.local", 8)),
               threading.Thread(target=reader, args=("bob", 8)),
               threading.Thread(target=reader, args=("carol", 8))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert errors == []
    # The poll stopped for the clients; the next ones fetch the rest once they are gone.
    fetched = lambda: sum(1 for line in board.lines if f"INFO collect: {aid}: message " in line)  # noqa: E731
    # (The poll's closing line comes after its last message's: a moment later, through the
    # board's reader thread.)
    assert wait_until(lambda: fetched() == 40 and " ok: " in (polls(board, aid) or [""])[-1], 60), "\n".join(board.lines[-30:])
    assert account(board, aid)["fetched_total"] == 40
    assert len(mailbox(board)) == 40
    assert not any("not enough memory" in line or "Traceback" in line for line in board.lines)
    after = board.request("info")
    print(f"\nheap_free idle {idle['heap_free']} (largest block {idle['heap_max_block']}), "
          f"after {after['heap_free']} (largest block {after['heap_max_block']})")


def test_the_host_commands(tmp_path, certs, provider):
    """pocketpost collect add/list/now/del against pocketpost sim, with Dovecot as the provider."""
    import json

    from sim_process import SimProcess, stop_quietly

    provider.put(MESSAGES[0])
    sim = SimProcess(tmp_path / "sim", "--demo-user", "alice:wonderland").start()
    try:
        cli = sim.cli
        assert cli("relay", "ca", "install", str(certs["good"][0])).exit_code == 0
        assert cli("collect", "list").stdout == "no collector accounts\n"
        result = cli("collect", "add", "alice", "--host", "localhost", "--port", str(provider.pop3s_port),
                     "--login", LOGIN, "--delete-after", "7", "--password-stdin", input=PASSWORD + "\n")
        assert result.exit_code == 0, result.stdout + result.stderr
        aid = re.match(r"collector account (\w{8}) added: alice@localhost:\d+ \(tls\) for alice, every 30 minutes", result.stdout).group(1)
        polled = json.loads(cli("collect", "now", aid, "--json").stdout)
        assert [a["id"] for a in polled] == [aid] and polled[0]["result"].startswith("ok: 1 listed, ")
        assert polled[0]["fetched_total"] == 1 and polled[0]["password"] == "********"
        table = cli("collect", "list").stdout
        assert aid in table and "keep 7d" in table and "ok: 1 listed" in table
        info = json.loads(cli("info", "--json").stdout)
        assert info["collect"][0]["id"] == aid
        bad = cli("collect", "add", "nobody", "--host", "localhost", "--login", "x", "--password-stdin", input="pw\n")
        assert bad.exit_code == 4 and "no user nobody" in bad.stderr
        assert cli("collect", "del", aid).stdout == f"collector account {aid} deleted\n"
        assert cli("collect", "list").stdout == "no collector accounts\n"
        logs = cli("logs", "-n", "200").stdout
        assert "collect: " in logs and PASSWORD not in logs + table + json.dumps(polled) + json.dumps(info)
        client = sim.pop3_login("alice", "wonderland")
        assert len(client.list()[1]) == 1
        client.quit()
    finally:
        stop_quietly(sim)


INVENTORY = """\
defaults:
  users:
    - {{name: alice, password: {{env: ALICE_PASSWORD}}}}
  collect:
    - user: alice
      host: localhost
      port: {port}
      login: alice
      password: {{env: PROVIDER_PASSWORD}}
      keep: false
      interval: {interval}
  relay:
    ca: ca.pem
boards:
  mail:
    board: unix
    sim: sim
"""


def test_inventory_apply_and_ansible_manage_collector_accounts(tmp_path, certs, provider, monkeypatch):
    """`collect:` in an inventory: added with the password from the environment (never in the
    file, the output or --diff), idempotent, changed when a setting differs, deleted with
    state: absent; the same through the Ansible module; the applied account fetches mail."""
    import json

    from sim_process import SimProcess, run_cli, stop_quietly
    from test_ansible import ansible

    monkeypatch.setenv("ALICE_PASSWORD", "wonderland")
    monkeypatch.setenv("PROVIDER_PASSWORD", PASSWORD)
    (tmp_path / "ca.pem").write_bytes(certs["good"][2])
    inventory_path = tmp_path / "inv.yml"
    inventory_path.write_text(INVENTORY.format(port=provider.pop3s_port, interval=30))
    provider.put(MESSAGES[1])
    sim = SimProcess(tmp_path / "sim").start()
    try:
        check = run_cli("apply", str(inventory_path), "--check", "--diff")
        assert check.exit_code == 0, check.stdout + check.stderr
        assert "collect alice alice@localhost" in check.stdout and "would be added" in check.stdout
        assert "password: ********" in check.stdout and PASSWORD not in check.stdout + check.stderr
        assert json.loads(sim.cli("collect", "list", "--json").stdout) == []
        first = run_cli("apply", str(inventory_path), "--diff")
        assert first.exit_code == 0, first.stdout + first.stderr
        assert PASSWORD not in first.stdout + first.stderr
        # The account added at once polls (the CA is installed before it): the message arrives.
        assert wait_until(lambda: provider.remaining() == 0, 30), sim.lines[-20:]
        client = sim.pop3_login("alice", "wonderland")
        assert split_trace(b"\r\n".join(client.retr(1)[1]) + b"\r\n") == crlf(MESSAGES[1])
        client.quit()
        again = run_cli("apply", str(inventory_path))
        assert again.exit_code == 0 and "changed=0" in again.stdout, again.stdout
        # A setting changed in the inventory: the account is changed (not added twice).
        inventory_path.write_text(INVENTORY.format(port=provider.pop3s_port, interval=60))
        changed = run_cli("apply", str(inventory_path), "--diff")
        assert "would be" not in changed.stdout and "changed: interval (password set again)" in changed.stdout
        accounts = json.loads(sim.cli("collect", "list", "--json").stdout)
        assert [(a["interval"], a["keep"], a["password"]) for a in accounts] == [(60, False, "********")]
        # Clear text is refused, naming its line.
        inventory_path.write_text(INVENTORY.format(port=provider.pop3s_port, interval=60).replace(
            "{env: PROVIDER_PASSWORD}", "hunter2"))
        refused = run_cli("apply", str(inventory_path))
        assert refused.exit_code == 2 and "inv.yml:9: defaults.collect[0].password: a collector account's password is a secret" in refused.stderr, refused.stderr
        # The Ansible module: absent deletes it; the password is no_log.
        (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    mail:\n      ansible_connection: local\n")
        (tmp_path / "play.yml").write_text(f"""\
- hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
    - pocketpost.appliance.board:
        sim: {tmp_path / "sim"}
        collect:
          - {{user: alice, host: localhost, login: alice, password: "{PASSWORD}", port: {provider.pop3s_port}, keep: false, interval: 60}}
          - {{user: alice, host: localhost, login: other, state: absent}}
""")
        played = ansible("ansible-playbook", "-i", "hosts.yml", "play.yml", "--diff", cwd=tmp_path, state=tmp_path)
        assert played.returncode == 0 and "changed=0" in played.stdout, played.stdout + played.stderr
        (tmp_path / "play.yml").write_text((tmp_path / "play.yml").read_text().replace("interval: 60}", "interval: 60, state: absent}"))
        played = ansible("ansible-playbook", "-i", "hosts.yml", "play.yml", "--diff", cwd=tmp_path, state=tmp_path)
        assert played.returncode == 0 and "changed=1" in played.stdout, played.stdout + played.stderr
        assert PASSWORD not in played.stdout + played.stderr
        assert json.loads(sim.cli("collect", "list", "--json").stdout) == []
    finally:
        stop_quietly(sim)
