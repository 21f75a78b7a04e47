"""`pocketpost mailbox export` and `import`: a sim's mailboxes moved to the real Dovecot and back,
checked by Dovecot itself (UIDL, LIST, RETR) and by fetchmail and mpop fetching nothing twice;
a Dovecot Maildir onto a fresh card; mbox and .eml imports byte-checked through the firmware's
own POP3 server; imports to a running board over SMTP and over its console; interrupted runs
finished by running again; bad input refused with nothing changed."""

import hashlib
import json
import os
import pty
import shutil
import smtplib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from pocketpost_host import migrate
from pocketpost_host.cli import cli

from client_tools import Pop3Wire, crlf, large_message, sample_message
from emulated_board import EmulatedBoard
from reference_servers import ReferenceServers, find_dovecot
from test_third_party_clients import CORPUS, FETCHMAIL_GOT_MAIL, FETCHMAIL_NO_MAIL, Fetchmail, Mpop

pytestmark = pytest.mark.timeout(240)

USERS = {"alice": "wonderland", "bob": "builder"}
DOMAIN = "pocketpost.local"
SENDER = "sender@example.org"


def pocketpost(*args, ok=0):
    """Runs the CLI; returns (exit code, stdout, stderr); asserts the exit code is `ok`."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == ok, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}\n{result.exception!r}"
    return result.exit_code, result.stdout, result.stderr


def pop3_state(port, user, password):
    """{uids, sizes, messages} of a mailbox, by a raw POP3 client that keeps exact octets."""
    box = Pop3Wire(port, user, password)
    try:
        uids, sizes = box.uids(), box.sizes()
        messages = {n: box.retr(n, sizes[n]) for n in sorted(sizes)}
    finally:
        box.quit()
    return {"uids": uids, "sizes": sizes, "messages": messages}


def store_warnings(board):
    return [line for line in board.lines if "WARN store" in line or "ERROR" in line]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(root):
    """{relative path: (mode, mtime, octets)} of every file and folder under `root`."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, None if path.is_dir() else path.read_bytes())
    return out


class DovecotMaildirs(ReferenceServers):
    """A private Dovecot (POP3 only, loopback) serving one Maildir a user under `mail_root`
    (where an export writes them): `mail_location = maildir:<mail_root>/%u`, plus `extra`
    settings. The folder is made first, so the export can write into it."""

    def __init__(self, users, extra=""):
        super().__init__()
        self.users = users
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="pocketpost-migrate-"))
        self.mail_root.mkdir()

    @property
    def mail_root(self):
        return self.dir / "mail"

    def start(self):
        dovecot = find_dovecot()
        try:
            owner = self._prepare()
            conf = self.dir / "dovecot.conf"
            conf.write_text(
                conf.read_text().replace("maildir:~/Maildir", f"maildir:{self.mail_root}/%u")
                + self.extra + "\n"
            )
            uid, gid = owner or (os.getuid(), os.getgid())
            (self.dir / "users").write_text(
                "".join(f"{u}:{{PLAIN}}{p}:{uid}:{gid}::{self.dir}/home/{u}::\n" for u, p in self.users.items())
            )
            if owner is not None:
                for root, dirs, files in os.walk(self.mail_root):
                    for name in dirs + files:
                        os.chown(os.path.join(root, name), *owner)
                os.chown(self.mail_root, *owner)
            self.dovecot = subprocess.Popen(
                [dovecot, "-c", str(conf), "-F"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            self._wait_for_pop3()
        except BaseException:
            self.stop()
            raise
        return self

    def stop_dovecot(self):
        """Stops Dovecot and keeps its folder (stop() removes it)."""
        if self.dovecot is not None:
            self.dovecot.terminate()
            self.dovecot.wait(15)
            self.dovecot.stdout.close()
            self.dovecot = None


def deliver(board, user, messages):
    with board.smtp() as s:
        for m in messages:
            assert not s.sendmail(SENDER, [f"{user}@{DOMAIN}"], m)


def delete(board, user, numbers):
    box = Pop3Wire(board.pop3_port, user, USERS[user])
    for n in numbers:
        box.command(f"DELE {n}")
    box.quit()


# ---- the sim's mailboxes moved to Dovecot


@pytest.fixture(scope="module")
def sim(app_dir, tmp_path_factory):
    """A stopped sim whose card holds the corpus and generated messages for alice (196 left
    after deletions, the last one deleted: the next number is past the last UIDL) and bob (150),
    with what POP3 showed of each mailbox, fetchmail's id file for alice and mpop's for bob
    (both kept everything on the server), and a POP3 export of bob's mailbox."""
    home = tmp_path_factory.mktemp("migrate-sim")
    board = EmulatedBoard(app_dir, home / "board").start()
    for user, password in USERS.items():
        board.add_user(user, password)
    corpus = [crlf(p.read_bytes()) for p in sorted(CORPUS.glob("msg_*.txt"))]
    assert len(corpus) >= 30
    generated = [sample_message(n, "moving") for n in range(150)]
    generated += [large_message(6000 + 3000 * n, seed=n) for n in range(20)]
    deliver(board, "alice", corpus + generated)
    deliver(board, "bob", [sample_message(n, "bob") for n in range(151)])
    delete(board, "alice", [3, 5, len(corpus) + len(generated)])
    delete(board, "bob", [1])
    state = {user: pop3_state(board.pop3_port, user, password) for user, password in USERS.items()}
    assert len(state["alice"]["uids"]) == len(corpus) + len(generated) - 3 and len(state["bob"]["uids"]) == 150

    port = types.SimpleNamespace(pop3_port=board.pop3_port)
    fetchmail = Fetchmail(port, home / "fetchmail")
    fetchmail("--keep", "--uidl", "--bad-header", "accept", ok=(FETCHMAIL_GOT_MAIL,))
    mpop = Mpop(port, home / "mpop", "maildir", keep=True)
    config = mpop.config.read_text().replace("user alice", "user bob")
    mpop.config.write_text(config.replace("password wonderland", "password builder"))
    mpop("--auth=user")
    assert len(mpop.maildir_messages()) == 150

    pocketpost("mailbox", "export", f"pop3://127.0.0.1:{board.pop3_port}", home / "over-pop3", "--user", "bob:builder")
    board.stop()
    assert not store_warnings(board)
    yield types.SimpleNamespace(board=board, image=board.data / "sd.img", state=state, fetchmail=fetchmail,
                                mpop=mpop, pop3_export=home / "over-pop3", home=home)


def test_export_to_dovecot_keeps_every_uidl_and_octet_and_moves_back(sim, make_board):
    image_before = sha(sim.image)
    dovecot = DovecotMaildirs(USERS, extra="pop3_uidl_format = %08Xv.%u")
    try:
        code, out, _ = pocketpost("mailbox", "export", sim.image, dovecot.mail_root, "--json")
        summary = json.loads(out)
        assert summary["messages"] == sum(len(s["uids"]) for s in sim.state.values()) and summary["skipped"] == []
        assert "pop3_uidl_format = %08Xv.%u" in summary["dovecot_config"]
        assert sha(sim.image) == image_before  # the source is never written
        # LF line ends in the files, the card's sizes in their names (W=).
        some = next((dovecot.mail_root / "alice" / "cur").iterdir())
        assert b"\r\n" not in some.read_bytes() and some.name.endswith(":2,")
        # The POP3 export wrote the same files as the image export (its uidlist's N can only
        # be the last UIDL's number + 1).
        names = sorted(p.name for p in (sim.pop3_export / "bob" / "cur").iterdir())
        assert names == sorted(p.name for p in (dovecot.mail_root / "bob" / "cur").iterdir())
        for name in names:
            over_pop3 = (sim.pop3_export / "bob" / "cur" / name).read_bytes()
            assert over_pop3 == (dovecot.mail_root / "bob" / "cur" / name).read_bytes()

        # An interrupted export, run again, ends as one that ran through.
        exported = tree(dovecot.mail_root / "bob" / "cur")
        shutil.rmtree(dovecot.mail_root / "bob")
        with pytest.raises(KeyboardInterrupt):
            migrate.export_mailboxes(sim.image, dovecot.mail_root, users=["bob"], progress=interrupt_after(40))
        assert len(list((dovecot.mail_root / "bob" / "cur").iterdir())) == 40
        assert not (dovecot.mail_root / "bob" / "dovecot-uidlist").exists()
        again = migrate.export_mailboxes(sim.image, dovecot.mail_root, users=["bob"])
        assert again["users"][0]["written"] == 110
        contents = lambda files: {name: octets for name, (_, _, octets) in files.items()}
        assert contents(tree(dovecot.mail_root / "bob" / "cur")) == contents(exported)

        dovecot.start()
        for user, password in USERS.items():
            served = pop3_state(dovecot.pop3_port, user, password)
            assert served["uids"] == sim.state[user]["uids"]  # message for message
            assert served["sizes"] == sim.state[user]["sizes"]
            assert served["messages"] == sim.state[user]["messages"]

        # fetchmail (--keep --uidl, its id file from the sim) and mpop (--only-new) fetch nothing.
        port = types.SimpleNamespace(pop3_port=dovecot.pop3_port)
        fetchmail = Fetchmail(port, sim.home / "fetchmail-dovecot")
        shutil.copy(sim.fetchmail.home / "fetchids", fetchmail.home / "fetchids")
        again = fetchmail("--keep", "--uidl", "--bad-header", "accept", ok=(FETCHMAIL_NO_MAIL,))
        assert "POP3> RETR" not in again.out and fetchmail.delivered() == b""
        config = sim.mpop.config.read_text()
        sim.mpop.config.write_text(config.replace(f"port {sim.board.pop3_port}", f"port {dovecot.pop3_port}"))
        result = sim.mpop("--auth=user", "--only-new")
        assert "--> RETR" not in result.out and "new: no messages" in result.out, result.transcript()
        assert len(sim.mpop.maildir_messages()) == 150

        # Mail that reaches Dovecot later continues the card's UIDLs (pop3_uidl_format above).
        gen, next_seq = summary["users"][0]["generation"], summary["users"][0]["next_seq"]
        assert next_seq == int(sim.state["alice"]["uids"][len(sim.state["alice"]["uids"])].split(".")[1]) + 2
        late = dovecot.mail_root / "alice" / "new" / "1700000000.M1P1.late"
        late.write_bytes(b"Subject: after the move\n\nFrom here on.\n.\n")
        os.chown(late, *dovecot.mail_root.stat()[4:6])
        served = pop3_state(dovecot.pop3_port, "alice", "wonderland")
        assert served["uids"][len(served["uids"])] == f"{gen}.{next_seq}"
        delete(types.SimpleNamespace(pop3_port=dovecot.pop3_port), "bob", [1])  # bob reads mail on Dovecot now
        dovecot.stop_dovecot()

        # A re-run writes nothing and changes nothing: what was deleted on Dovecot stays deleted.
        files = sorted((p.name, p.read_bytes()) for p in (dovecot.mail_root / "bob" / "cur").iterdir())
        assert len(files) == 149
        _, out, _ = pocketpost("mailbox", "export", sim.image, dovecot.mail_root, "--user", "bob", "--json")
        rerun = json.loads(out)
        assert rerun["users"][0]["written"] == 0 and rerun["messages"] == 149
        assert rerun["skipped"] == [{"user": "bob", "message": rerun["skipped"][0]["message"],
                                     "reason": "deleted from the destination since an earlier export"}]
        assert files == sorted((p.name, p.read_bytes()) for p in (dovecot.mail_root / "bob" / "cur").iterdir())
        # alice's Maildir now holds mail that is not on the card: an export onto it is refused.
        code, _, err = pocketpost("mailbox", "export", sim.image, dovecot.mail_root, "--user", "alice", ok=1)
        assert "already holds mail that is not from the source" in err and err.count("\n") == 1

        # And back onto a fresh card: every UIDL kept, the late message's too.
        board = make_board().start()
        for user, password in USERS.items():
            board.add_user(user, password)
        board.stop()
        # Dovecot gave the late message no P field: its UIDL comes from pop3_uidl_format.
        pocketpost("mailbox", "import", dovecot.mail_root, board.data / "sd.img", "--uidl-format", "%08Xv.%u")
        board.start()
        assert not store_warnings(board)  # the boot check found nothing to repair
        for user, password in USERS.items():
            back = pop3_state(board.pop3_port, user, password)
            if user == "alice":
                assert back["uids"] == served["uids"] and back["messages"] == served["messages"]
            else:  # less the message deleted on Dovecot
                before = sim.state[user]
                assert back == {key: {n - 1: v for n, v in before[key].items() if n > 1} for key in before}
        # The UIDL rule holds: the next delivery takes the next number.
        deliver(board, "alice", [sample_message(1, "after")])
        uids = pop3_state(board.pop3_port, "alice", "wonderland")["uids"]
        assert uids[len(uids)] == f"{gen}.{next_seq + 1}"
    finally:
        dovecot.stop()


# ---- a Dovecot Maildir onto a fresh card


class DeliveringDovecot(ReferenceServers):
    """The suite's reference Dovecot + SMTP, with extra settings."""

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def _prepare(self):
        owner = super()._prepare()
        conf = self.dir / "dovecot.conf"
        conf.write_text(conf.read_text() + self.extra + "\n")
        return owner


def fresh_card(make_board, users=("alice",)):
    board = make_board().start()
    for user in users:
        board.add_user(user, USERS.get(user, "secret"))
    board.stop()
    return board


@pytest.mark.parametrize("uidl_format", ["%08Xu%08Xv", "%08Xv.%u"], ids=["dovecot-default-uidls", "card-form-uidls"])
def test_import_dovecot_maildir_onto_fresh_card(make_board, tmp_path, uidl_format):
    # Dovecot's default pop3_uidl_format gives UIDLs of another form (000000016553f100): the card
    # keeps them in the mailbox's uidls file. With %08Xv.%u they are of the card's own form.
    default = uidl_format == migrate.DOVECOT_DEFAULT_UIDL_FORMAT
    with DeliveringDovecot("" if default else f"pop3_uidl_format = {uidl_format}") as dovecot:
        messages = [crlf(p.read_bytes()) for p in sorted(CORPUS.glob("msg_*.txt"))[:10]]
        messages += [sample_message(n, "dovecot") for n in range(15)] + [large_message(9000, seed=7)]
        with dovecot_smtp(dovecot) as s:
            for m in messages:
                s.sendmail(SENDER, ["alice@reference.test"], m)
        served = pop3_state(dovecot.pop3_port, "alice", "wonderland")
        assert len(served["uids"]) == len(messages)
        assert all(migrate.CARD_UIDL.fullmatch(u) is None for u in served["uids"].values()) == default
        fetchmail = Fetchmail(types.SimpleNamespace(pop3_port=dovecot.pop3_port), tmp_path / "fetchmail")
        fetchmail("--keep", "--uidl", "--bad-header", "accept", ok=(FETCHMAIL_GOT_MAIL,))
        source = tmp_path / "Maildir"
        shutil.copytree(dovecot.maildir, source)
    source_before = tree(source)

    board = fresh_card(make_board)
    image = board.data / "sd.img"
    formats = () if default else ("--uidl-format", uidl_format)  # Dovecot's default is the default
    # An interrupted import (here: after the first 25 messages) is finished by running it again.
    before = sha(image)
    pocketpost("mailbox", "import", source, image, "--user", "alice", "--dry-run", *formats)
    assert sha(image) == before
    with pytest.raises(KeyboardInterrupt):
        migrate.import_mailboxes(source, image, user="alice", progress=interrupt_after(1), uidl_format=uidl_format)
    _, out, _ = pocketpost("mailbox", "import", source, image, "--user", "alice", "--json", *formats)
    summary = json.loads(out)
    assert summary["users"][0]["uidls"] == {"kept": len(messages), "new": 0, "changed": 0}
    assert 0 < summary["users"][0]["written"] < len(messages)
    _, out, _ = pocketpost("mailbox", "import", source, image, "--user", "alice", "--json", *formats)
    assert json.loads(out)["users"][0]["written"] == 0  # converged: nothing twice

    assert tree(source) == source_before  # the source is never written
    board.start()
    assert not store_warnings(board)
    assert pop3_state(board.pop3_port, "alice", "wonderland") == served
    # fetchmail with Dovecot's id file fetches nothing new from the sim.
    rc = fetchmail.rcfile.read_text()
    fetchmail.rcfile.write_text(rc.replace(f"port {dovecot.pop3_port}", f"port {board.pop3_port}"))
    again = fetchmail("--keep", "--uidl", "--bad-header", "accept", ok=(FETCHMAIL_NO_MAIL,))
    assert "POP3> RETR" not in again.out
    if not default:
        return
    # Kept UIDLs live on beside the card's own: a deletion, a new message, and the move back to
    # Dovecot (the export's P fields) keep every one.
    delete(board, "alice", [2, 7])
    deliver(board, "alice", [sample_message(99, "after the import")])
    on_card = pop3_state(board.pop3_port, "alice", "wonderland")
    kept = [u for u in served["uids"].values() if u not in (served["uids"][2], served["uids"][7])]
    assert list(on_card["uids"].values())[:-1] == kept
    assert migrate.CARD_UIDL.fullmatch(on_card["uids"][len(kept) + 1])
    board.stop()
    assert not store_warnings(board)
    back = DovecotMaildirs({"alice": "wonderland"})
    try:
        pocketpost("mailbox", "export", image, back.mail_root)
        back.start()
        assert pop3_state(back.pop3_port, "alice", "wonderland") == on_card
    finally:
        back.stop()


def dovecot_smtp(dovecot):
    return smtplib.SMTP("127.0.0.1", dovecot.smtp_port, local_hostname="client.example", timeout=20)


def interrupt_after(calls):
    """A progress callback that stops the run (as Ctrl-C would) at its `calls`-th call."""
    count = [0]

    def progress(octets):
        count[0] += 1
        if count[0] >= calls:
            raise KeyboardInterrupt

    return progress


def test_maildir_uidls_of_any_form_are_kept_and_invalid_ones_need_new_uidls(make_board, tmp_path):
    # Dovecot's default pop3_uidl_format (%08Xu%08Xv) makes UIDLs such as 000000016553f100: the
    # card keeps them (its uidls file). A UIDL no client can hold (71 characters) or one that
    # two messages share cannot be kept: refused unless --new-uidls.
    source = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (source / sub).mkdir(parents=True)
    (source / "cur" / "1.M1.host:2,S").write_bytes(b"Subject: one\n\nbody\n")
    (source / "cur" / "2.M2.host:2,").write_bytes(b"Subject: two\n\nbody\n")
    (source / "new" / "3.M3.host").write_bytes(b"Subject: three, never listed\n\nbody\n")
    (source / "cur" / "4.M4.host:2,").write_bytes(b"Subject: four\n\nbody\n")
    (source / "cur" / "5.M5.host:2,").write_bytes(b"Subject: five\n\nbody\n")
    (source / "cur" / "6.M6.host:2,").write_bytes(b"Subject: six\n\nbody\n")
    (source / "dovecot-uidlist").write_text(
        "3 V1700000000 N7 Gabcdef\n1 :1.M1.host\n2 :2.M2.host\n4 P" + "x" * 71 + " :4.M4.host\n"
        "5 Pkeep-me-70-" + "y" * 57 + " :5.M5.host\n6 P000000016553f100 :6.M6.host\n"
    )
    board = fresh_card(make_board)
    image = board.data / "sd.img"
    before = sha(image)
    _, _, err = pocketpost("mailbox", "import", source, image, "--user", "alice", ok=2)
    assert "2 messages would get new UIDLs" in err and "'" + "x" * 71 + "'" in err and "--new-uidls" in err
    assert sha(image) == before
    _, out, _ = pocketpost("mailbox", "import", source, image, "--user", "alice", "--new-uidls", "--json")
    summary = json.loads(out)
    assert summary["users"][0]["uidls"] == {"kept": 3, "new": 1, "changed": 2}
    assert summary["skipped"] == []  # imported, two with new UIDLs
    reasons = [s["reason"] for s in summary["uidl_changed"]]
    assert reasons == [
        "UIDL '" + "x" * 71 + "' changed: it is not a valid POP3 UIDL (RFC 1939: 1-70 printable characters), "
        "so no client can hold it",
        "UIDL '000000016553f100' changed: it is the UIDL of an earlier message too (RFC 1939: unique in a maildrop)",
    ]
    board.start()
    assert not store_warnings(board)
    state = pop3_state(board.pop3_port, "alice", "wonderland")
    subjects = [m.split(b"\r\n")[0] for m in state["messages"].values()]
    assert subjects == [b"Subject: one", b"Subject: two", b"Subject: four", b"Subject: five", b"Subject: six",
                        b"Subject: three, never listed"]
    uids = state["uids"]
    generation = uids[3].split(".")[0]
    assert uids == {1: "000000016553f100", 2: "000000026553f100", 3: generation + ".3", 4: "keep-me-70-" + "y" * 57,
                    5: generation + ".5", 6: generation + ".6"}
    # UIDL n finds a kept UIDL too (the firmware bisects the uidls file).
    box = Pop3Wire(board.pop3_port, "alice", "wonderland")
    try:
        assert box.command("UIDL 4") == b"+OK 4 keep-me-70-" + b"y" * 57
        assert box.command("UIDL 2") == b"+OK 2 000000026553f100"
        assert box.command("UIDL 6") == f"+OK 6 {generation}.6".encode()
        assert box.command("UIDL 1") == b"+OK 1 000000016553f100"
    finally:
        box.quit()


# ---- mbox and .eml


BODY_LINES = [
    b"From: Someone <someone@example.org>",
    b"Subject: tricky lines",
    b"",
    b"From the start of a line, in the body.",
    b">From a line that was quoted already.",
    b">>From twice.",
    b".a line starting with a dot",
    b"..two dots",
    b".",
    b"",
    b"From the second paragraph, after an empty line",
    b"last line",
]


def mbox_messages():
    """(the messages as the card must store them, an mboxrd file of them, an mboxo file)."""
    messages = [
        b"\r\n".join(BODY_LINES[:2] + [b"Message-ID: <%d@example.org>" % n] + BODY_LINES[2:]) + b"\r\n"
        for n in range(3)
    ]
    messages.append(b"Subject: no trailing newline in the file\r\n\r\nshort\r\n")

    def mbox(quote):
        out = b""
        for m in messages:
            body = m.replace(b"\r\n", b"\n")
            body = b"\n".join(quote(line) for line in body.split(b"\n"))
            out += b"From sender@example.org Thu Jan  1 00:00:00 2026\n" + body + b"\n"
        return out[:-2]  # the last message's final newline and the empty line missing

    import re

    rd = mbox(lambda line: b">" + line if re.match(rb">*From ", line) else line)
    o = mbox(lambda line: b">" + line if line.startswith(b"From ") else line)
    return messages, rd, o


def test_mbox_and_eml_imports_are_byte_exact(make_board, tmp_path):
    messages, mboxrd, mboxo = mbox_messages()
    (tmp_path / "rd.mbox").write_bytes(mboxrd)
    (tmp_path / "o.mbox").write_bytes(mboxo)
    eml = tmp_path / "eml"
    eml.mkdir()
    for n, m in enumerate(messages):
        (eml / f"{n:03d}.eml").write_bytes(m if n % 2 else m.replace(b"\r\n", b"\n"))  # CRLF or LF files
    (eml / "notes.txt").write_text("not a message")

    board = fresh_card(make_board, ("alice", "bob", "carol"))
    image = board.data / "sd.img"
    pocketpost("mailbox", "import", tmp_path / "rd.mbox", image, "--user", "alice")
    pocketpost("mailbox", "import", tmp_path / "o.mbox", image, "--user", "carol", "--mbox-quoting", "mboxo")
    _, out, _ = pocketpost("mailbox", "import", eml, image, "--user", "bob", "--json")
    skipped = {"message": str(eml / "notes.txt"), "reason": "not an .eml file", "user": "bob"}
    assert json.loads(out)["skipped"] == [skipped]
    board.start()
    assert not store_warnings(board)
    alice = pop3_state(board.pop3_port, "alice", "wonderland")["messages"]
    assert list(alice.values()) == messages
    assert list(pop3_state(board.pop3_port, "bob", "builder")["messages"].values()) == messages
    # mboxo cannot tell ">From " that was written so from a quoted "From ": both come back as "From ".
    carol = list(pop3_state(board.pop3_port, "carol", "secret")["messages"].values())
    assert carol == [m.replace(b">From a line", b"From a line") for m in messages]


def on_a_terminal(*args):
    """Runs the pocketpost command with its stderr on a pseudo-terminal (as a person runs it);
    returns (exit code, stdout, what the terminal showed)."""
    main, child = pty.openpty()
    command = [str(Path(sys.executable).parent / "pocketpost"), *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    out = process.stdout.read()
    process.stdout.close()
    return process.wait(60), out.decode(), shown.decode()


def test_progress_bars_on_a_terminal_and_none_with_json(make_board, tmp_path):
    messages, mboxrd, _ = mbox_messages()
    (tmp_path / "mail.mbox").write_bytes(mboxrd)
    board = fresh_card(make_board)
    image = board.data / "sd.img"
    code, out, shown = on_a_terminal("mailbox", "import", tmp_path / "mail.mbox", image, "--user", "alice")
    assert code == 0, shown
    total = len(b"".join(messages))
    assert "importing" in shown and "100%" in shown  # the bar, in octets, ran to its end
    assert f"{len(messages)} messages" in out and "importing" not in out  # the bar is on stderr only
    code, out, shown = on_a_terminal("mailbox", "export", image, tmp_path / "out")
    assert code == 0 and "exporting" in shown and "100%" in shown, shown
    code, out, shown = on_a_terminal("mailbox", "export", image, tmp_path / "again", "--json")
    assert code == 0 and "exporting" not in shown and json.loads(out)["octets"] == total


# ---- bad input: a clear one-line error, nothing changed


def test_bad_input_is_refused_and_changes_nothing(make_board, tmp_path):
    board = fresh_card(make_board)
    image = board.data / "sd.img"
    good = tmp_path / "good.mbox"
    good.write_bytes(b"From a@example.org Thu Jan  1 00:00:00 2026\nSubject: x\n\nbody\n")
    pocketpost("mailbox", "import", good, image, "--user", "alice")
    before = sha(image)

    corrupt = tmp_path / "corrupt.mbox"
    corrupt.write_bytes(b"Subject: no From line\n\nbody\n")
    empty_message = tmp_path / "empty.mbox"
    empty_message.write_bytes(b"From a@example.org Thu Jan  1 00:00:00 2026\n\nFrom b@example.org x\nSubject: y\n\nz\n")
    not_fat = tmp_path / "not-fat.img"
    not_fat.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * 65536)
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(os.urandom(100000))
    cases = [
        (("import", corrupt, image, "--user", "alice"), 2, "not an mbox file"),
        (("import", empty_message, image, "--user", "alice"), 2, "message 1 is empty"),
        (("import", good, image, "--user", "alice"), 1, "already holds"),  # bob's mailbox is alice's
        (("import", good, not_fat, "--user", "alice"), 2, "not a FAT image"),
        (("import", good, garbage, "--user", "alice"), 2, "not a FAT image"),
        (("export", not_fat, tmp_path / "out"), 2, "not a FAT image"),
        (("export", tmp_path / "missing.img", tmp_path / "out"), 2, "no such card folder"),
        (("import", good, image, "--user", "Not/A/User"), 2, "is not a user name"),
    ]
    other = tmp_path / "other.mbox"
    other.write_bytes(b"From a@example.org Thu Jan  1 00:00:00 2026\nSubject: other\n\nbody\n")
    cases[2] = (("import", other, image, "--user", "alice"), 1, "already holds")
    # An image a running sim holds (its folder's sim.lock) is refused.
    import fcntl

    with open(image.parent / "sim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cases.append((("import", good, image, "--user", "alice"), 1, "a pocketpost sim is running on"))
        cases.append((("export", image, tmp_path / "out"), 1, "a pocketpost sim is running on"))
        for args, code, text in cases[-2:]:
            _, out, err = pocketpost("mailbox", *args, ok=code)
            assert text in err and err.count("\n") == 1, (args, err)
    cases[-2:] = []
    (image.parent / "sim.lock").unlink()
    # --dry-run reads and checks, and writes nothing.
    _, out, _ = pocketpost("mailbox", "export", image, tmp_path / "out", "--dry-run", "--json")
    assert json.loads(out)["messages"] == 1 and json.loads(out)["dry_run"]
    for args, code, text in cases:
        _, out, err = pocketpost("mailbox", *args, ok=code)
        assert text in err and err.count("\n") == 1, (args, err)
        assert out == ""
    assert sha(image) == before
    assert not (tmp_path / "out").exists()
    board.start()
    assert not store_warnings(board)
    assert len(pop3_state(board.pop3_port, "alice", "wonderland")["uids"]) == 1


def test_card_folder_import_converges_and_reads_back(tmp_path):
    # A card mounted on this computer is a folder; an import interrupted part-way and run again
    # leaves exactly what one run leaves (same generation, no duplicates).
    messages, mboxrd, _ = mbox_messages()
    source = tmp_path / "in.mbox"
    source.write_bytes(mboxrd)
    card = tmp_path / "card"
    card.mkdir()
    with pytest.raises(KeyboardInterrupt):
        migrate.import_mailboxes(source, card, user="alice", progress=interrupt_after(2))
    assert len(list((card / "mail" / "alice" / "0").iterdir())) == 2
    summary = migrate.import_mailboxes(source, card, user="alice")
    assert summary["users"][0]["written"] == 2
    (box,) = migrate.read_card(card)
    assert [m.load() for m in box.messages] == messages
    assert [m.seq for m in box.messages] == [1, 2, 3, 4] and box.next_seq == 5
    assert list((card / "tmp").iterdir()) == []
    index = (card / "mail" / "alice" / "index").read_bytes()
    assert len(index) == 5 * migrate.RECORD and index.startswith(b"+") and index[10:20] == b"000000005\n"


def test_import_over_smtp_gets_new_uidls_and_converges(make_board, tmp_path):
    # A running board over SMTP: the board's trace fields go in front, UIDLs are new; what the
    # mailbox holds already (read over POP3) is not sent again.
    messages, mboxrd, _ = mbox_messages()
    source = tmp_path / "in.mbox"
    source.write_bytes(mboxrd)
    board = make_board().start()
    board.add_user("alice", "wonderland")
    dest = f"smtp://127.0.0.1:{board.smtp_port}"
    _, _, err = pocketpost("mailbox", "import", source, dest, "--user", "alice", ok=2)
    assert "needs the user's password" in err
    with pytest.raises(KeyboardInterrupt):
        migrate.import_mailboxes(source, dest, user="alice", password="wonderland", pop3_port=board.pop3_port,
                                 progress=interrupt_after(2))
    _, out, _ = pocketpost("mailbox", "import", source, dest, "--user", "alice", "--password", "wonderland",
                           "--pop3-port", board.pop3_port, "--json")
    summary = json.loads(out)
    assert summary["users"][0]["written"] == 2 and summary["users"][0]["uidls"]["new"] == 4
    stored = list(pop3_state(board.pop3_port, "alice", "wonderland")["messages"].values())
    assert [migrate.strip_trace(m) for m in stored] == messages
    assert all(m.startswith(b"Return-Path: <sender@example.org>\r\nReceived: ") for m in stored)
    # A Maildir's UIDLs cannot survive SMTP: refused unless --new-uidls.
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1.M1.host:2,").write_bytes(b"Subject: one\n\nbody\n")
    (maildir / "dovecot-uidlist").write_text("3 V1700000000 N2 Gabcdef\n1 P6553f100.1 :1.M1.host\n")
    _, _, err = pocketpost("mailbox", "import", maildir, dest, "--user", "alice", "--password", "wonderland",
                           "--pop3-port", board.pop3_port, ok=2)
    assert "over SMTP every message gets a new UIDL" in err


def test_export_reads_a_partitioned_card_copy_and_the_first_layout(sim, tmp_path):
    # A dd copy of a whole card: an MBR, the FAT partition at 1 MiB.
    card = tmp_path / "card.img"
    mbr = bytearray(512)
    mbr[446 + 4] = 0x0C  # FAT32 LBA
    mbr[446 + 8 : 446 + 12] = (2048).to_bytes(4, "little")
    mbr[446 + 12 : 446 + 16] = (sim.image.stat().st_size // 512).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    with open(card, "wb") as f:
        f.write(mbr + bytes(2048 * 512 - 512))
        f.write(sim.image.read_bytes())
    _, out, _ = pocketpost("mailbox", "export", card, tmp_path / "out", "--user", "bob", "--json")
    assert json.loads(out)["messages"] == 150
    uidlist = (tmp_path / "out" / "bob" / "dovecot-uidlist").read_text().splitlines()
    assert [line.split()[1][1:] for line in uidlist[1:]] == list(sim.state["bob"]["uids"].values())

    # A card folder with a mailbox of the first layout (mark "#", 1,000 messages a folder), a
    # committed deletion not finished yet (its journal), and a message not yet indexed.
    root = tmp_path / "folder-card"
    box = root / "mail" / "carol"
    for seq, shard in ((999, 0), (1000, 1), (1001, 1), (1002, 1)):
        (box / str(shard)).mkdir(parents=True, exist_ok=True)
        (box / str(shard) / str(seq)).write_bytes(b"Subject: %d\r\n\r\nbody\r\n" % seq)
    size = len(b"Subject: 999\r\n\r\nbody\r\n")
    records = b"".join(b"%08d %010d\n" % (s, size + 1 if s >= 1000 else size) for s in (998, 999, 1000, 1001))
    (box / "index").write_bytes(b"#0badcafe 000000999\n" + records)
    (box / "purge").write_bytes(b"00001000\n")
    _, out, _ = pocketpost("mailbox", "export", root, tmp_path / "out2", "--json")
    summary = json.loads(out)
    assert summary["users"][0]["next_seq"] == 1003
    assert summary["skipped"] == [{"user": "carol", "message": "carol 0badcafe.998", "reason": "its file is missing"}]
    uidlist = (tmp_path / "out2" / "carol" / "dovecot-uidlist").read_text().splitlines()
    assert uidlist[0].startswith(f"3 V{0x0badcafe} N1003 ")
    assert [line.split()[:2] for line in uidlist[1:]] == [
        ["999", "P0badcafe.999"], ["1001", "P0badcafe.1001"], ["1002", "P0badcafe.1002"]]


def test_export_over_pop3s_from_a_board_with_a_certificate(make_board, tmp_path):
    from emulated_board import free_port
    from pocketpost_host import tls as certificates

    cert_pem, key_pem = certificates.generate("127.0.0.1", days=30)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    board = make_board(pop3s_port=free_port()).start()
    certificates.install(board.console, *certificates.to_der(cert_pem, key_pem))
    board.restart()
    board.add_user("alice", "wonderland")
    deliver(board, "alice", [sample_message(n, "tls") for n in range(3)])
    source = f"pop3s://127.0.0.1:{board.options['pop3s_port']}"
    _, _, err = pocketpost("mailbox", "export", source, tmp_path / "out", "--user", "alice:wonderland", ok=1)
    assert "TLS with" in err and "--cafile" in err and not (tmp_path / "out").exists()
    _, out, _ = pocketpost("mailbox", "export", source, tmp_path / "out", "--user", "alice:wonderland",
                           "--cafile", tmp_path / "cert.pem", "--json")
    assert json.loads(out)["messages"] == 3
    # The same files as an export of the card itself.
    board.stop()
    pocketpost("mailbox", "export", board.data / "sd.img", tmp_path / "card")
    read = lambda root: sorted((p.name, p.read_bytes()) for p in (root / "alice" / "cur").iterdir())
    assert read(tmp_path / "out") == read(tmp_path / "card") and len(read(tmp_path / "out")) == 3


def test_import_that_does_not_fit_is_refused_before_writing(make_board, tmp_path):
    board = fresh_card(make_board)
    image = board.data / "sd.img"
    free, _ = migrate.FatImage(image).space()
    eml = tmp_path / "eml"
    eml.mkdir()
    big = large_message(free // 3)
    for n in range(3):
        (eml / f"{n}.eml").write_bytes(big)
    before = sha(image)
    _, _, err = pocketpost("mailbox", "import", eml, image, "--user", "alice", ok=1)
    assert "octets free; the import needs" in err
    assert sha(image) == before


def test_dovecot_serves_the_uidlist_p_field_and_x_uidl_only_when_told(tmp_path):
    # What docs/storage.md says of Dovecot 2.3, checked: the P field needs no setting and wins;
    # an X-UIDL header counts only with pop3_reuse_xuidl (and would change the message anyway).
    cases = (("", ["1a2b3c4d.41", None]), ("pop3_reuse_xuidl = yes", ["1a2b3c4d.41", "from-the-header"]))
    for extra, expected in cases:
        dovecot = DovecotMaildirs({"alice": "wonderland"}, extra=extra)
        try:
            md = dovecot.mail_root / "alice"
            for sub in ("cur", "new", "tmp"):
                (md / sub).mkdir(parents=True)
            for uid, x_uidl in ((41, "ignored"), (42, "from-the-header")):
                message = b"X-UIDL: %s\nSubject: %d\n\nbody\n" % (x_uidl.encode(), uid)
                (md / "cur" / f"{uid}.M1.host:2,").write_bytes(message)
            (md / "dovecot-uidlist").write_text(
                f"3 V{0x1a2b3c4d} N43 G{'0123456789abcdef' * 2}\n41 P1a2b3c4d.41 :41.M1.host\n42 :42.M1.host\n"
            )
            dovecot.start()
            uids = pop3_state(dovecot.pop3_port, "alice", "wonderland")["uids"]
            assert uids[1] == expected[0]
            assert uids[2] == expected[1] if expected[1] else uids[2] == f"{42:08x}{0x1a2b3c4d:08x}"
        finally:
            dovecot.stop()


def test_import_onto_a_card_formatted_elsewhere_passes_fsck_and_boots(make_board, tmp_path):
    # A card formatted by mkfs.vfat (no mail/ or tmp/ folder yet), as a new card from a shop.
    messages, mboxrd, _ = mbox_messages()
    (tmp_path / "in.mbox").write_bytes(mboxrd)
    board = fresh_card(make_board)
    image = board.data / "sd.img"
    size_kib = image.stat().st_size // 1024
    image.unlink()
    subprocess.run([shutil.which("mkfs.vfat", path="/usr/sbin:/sbin:/usr/bin"), "-C", str(image), str(size_kib)],
                   check=True, capture_output=True)
    pocketpost("mailbox", "import", tmp_path / "in.mbox", image, "--user", "alice")
    fsck = subprocess.run([shutil.which("fsck.fat", path="/usr/sbin:/sbin:/usr/bin"), "-n", str(image)],
                          capture_output=True, text=True)
    assert fsck.returncode == 0 and "Free cluster summary wrong" not in fsck.stdout, fsck.stdout
    first_boot = len(board.lines)
    board.start()
    assert not store_warnings(board) and not any("formatted the SD image" in line for line in board.lines[first_boot:])
    assert list(pop3_state(board.pop3_port, "alice", "wonderland")["messages"].values()) == messages


def test_import_over_the_console_keeps_uidls(tmp_path):
    # `pocketpost sim` as a user runs it: the import stops the firmware from its console, writes
    # the card from the REPL, and the soft reset brings the firmware back with the mail in place.
    from sim_process import SimProcess, stop_quietly

    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    messages = [sample_message(n, "console") for n in range(3)] + [large_message(5000, seed=3)]
    uidlist = [f"3 V{0x1a2b3c4d} N208 G{'0123456789abcdef' * 2}\n"]
    for seq, message in zip((5, 99, 100, 207), messages):
        (maildir / "cur" / f"{seq}.M1.host:2,").write_bytes(message.replace(b"\r\n", b"\n"))
        uidlist.append(f"{seq} P1a2b3c4d.{seq} :{seq}.M1.host\n")
    (maildir / "dovecot-uidlist").write_text("".join(uidlist))
    mbox = tmp_path / "bob.mbox"
    expected_bob, mboxrd, _ = mbox_messages()
    mbox.write_bytes(mboxrd)

    sim = SimProcess(tmp_path / "sim").start()
    try:
        for user in ("alice", "bob"):
            assert sim.cli("user", "add", user, "--password-stdin", input=USERS[user] + "\n").exit_code == 0
        mark = len(sim.lines)
        for source, user in ((maildir, "alice"), (mbox, "bob")):
            result = sim.cli("mailbox", "import", str(source), "console", "--user", user, "--json")
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["users"][0]["written"] == 4
        sim.wait_for("sim: soft reset; starting the firmware", start=mark)
        # A refused import (alice's mailbox holds other mail) changes nothing and restarts the firmware too.
        result = sim.cli("mailbox", "import", str(mbox), "console", "--user", "alice")
        assert result.exit_code == 1 and "already holds" in result.stderr, result.output
        alice = pop3_state(sim.pop3_port, "alice", "wonderland")
        assert list(alice["uids"].values()) == ["1a2b3c4d.5", "1a2b3c4d.99", "1a2b3c4d.100", "1a2b3c4d.207"]
        assert list(alice["messages"].values()) == messages
        assert list(pop3_state(sim.pop3_port, "bob", "builder")["messages"].values()) == expected_bob
        assert not [line for line in sim.lines[mark:] if "WARN store" in line or "ERROR" in line]
        # The next message takes the next number (N of the uidlist): no UIDL is ever reused.
        with smtplib.SMTP("127.0.0.1", sim.smtp_port, local_hostname="client.example", timeout=20) as smtp:
            smtp.sendmail(SENDER, [f"alice@{DOMAIN}"], sample_message(9, "after"))
        assert pop3_state(sim.pop3_port, "alice", "wonderland")["uids"][5] == "1a2b3c4d.208"
    finally:
        stop_quietly(sim)
