"""TLS in inventories: examples/fleet/tls.yml applied to two simulators with certificates made
here (tls.generate): check mode, installation, idempotence, a new certificate detected and
installed, TLS (STLS, implicit POP3S) working afterwards with the certificate as CA, and the
schema's errors, each naming its line."""

import base64
import poplib
import ssl
from functools import partial

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pocketpost_host import fleet as fleet_command
from pocketpost_host import inventory
from pocketpost_host import tls as certificates
from pocketpost_host.apply import apply_board
from pocketpost_host.errors import BoardError

from emulated_board import free_port
from fleet_sims import REPO, Fleet, apply, assert_inventory_refused, changed_items, items, recap
from sim_process import run_cli

EXIT_USAGE = 2
DEMO = ("demo", "demo-pass")


def make_certificate(folder, name, hostname="127.0.0.1"):
    """A key and a self-signed certificate for the sims' address, as `pocketpost tls generate`
    writes them; returns (certificate PEM, key PEM)."""
    cert_pem, key_pem = certificates.generate(hostname, days=30)
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.pem").write_bytes(cert_pem)
    (folder / f"{name}.key").write_bytes(key_pem)
    return cert_pem, key_pem


def fingerprint_of(cert_pem):
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return certificates.fingerprint(der)


def key_material(key_pem):
    """Lines of a key's PEM that must never be printed."""
    return [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def fleet(tmp_path):
    """The example folder with both boards running, each with the user demo; mail-a also
    listens for POP3 over implicit TLS (on a port its command line sets)."""
    running = Fleet(tmp_path / "fleet")
    running.pop3s_port = free_port()
    try:
        running.start("mail-a", options=("--demo-user", "demo:demo-pass", "--pop3s-port", str(running.pop3s_port)))
        running.start("mail-b", options=("--demo-user", "demo:demo-pass"))
        running.tls_inventory = running.root / "tls.yml"
        yield running
    finally:
        running.stop()



def shown(fleet, name):
    """The board's tls.show, or None when it has no certificate."""
    with fleet.board(name) as board:
        try:
            return board.request("tls.show")
        except BoardError as e:
            assert e.code == "NOTFOUND"
            return None


def load_if_needed(fleet, name, output):
    """Reboots a board that had no heap to load its new certificate at once (apply's note says
    so, and the board's info agrees)."""
    with fleet.board(name) as board:
        tls = board.info()["tls"]
        loaded = tls["certificate"] and not tls["pending_reboot"]
    noted = f"note: [{name}] tls certificate takes effect after a reboot" in output
    assert noted == (not loaded), output
    if not loaded:
        sim = fleet.sims[name]
        start = len(sim.lines)
        assert sim.cli("reboot").exit_code == 0
        sim.wait_for("INFO boot: ready", start=start, timeout=30)


def stls_login(sim, cafile):
    """STLS verified against `cafile` (the board's certificate for 127.0.0.1), then a login;
    returns the fingerprint of the certificate the board presented."""
    client = poplib.POP3("127.0.0.1", sim.pop3_port, timeout=20)
    try:
        client.stls(ssl.create_default_context(cafile=str(cafile)))
        presented = client.sock.getpeercert(binary_form=True)
        client.user(DEMO[0])
        client.pass_(DEMO[1])
        client.quit()
    finally:
        try:
            client.close()
        except OSError:  # after a failed handshake the socket is closed already
            pass
    return certificates.fingerprint(presented)



def test_certificates_applied_to_two_boards(fleet):
    certs = fleet.root / "certs"
    pems = {name: make_certificate(certs, name) for name in ("mail-a", "mail-b")}
    fingerprints = {name: fingerprint_of(cert) for name, (cert, _) in pems.items()}
    assert fingerprints["mail-a"] != fingerprints["mail-b"]
    # mail-a's implicit TLS port, as its command line sets it: compared like any setting.
    fleet.write("tls.yml", fleet.tls_inventory.read_text().replace(
        "      cert: certs/mail-a.pem", f"      pop3s_port: {fleet.pop3s_port}\n      cert: certs/mail-a.pem"))

    # Check mode: what would change, fingerprints and subjects, and nothing changes.
    check = apply(fleet.tls_inventory, "--check", "--diff")
    assert check.exit_code == 0, check.stdout + check.stderr
    for name in ("mail-a", "mail-b"):
        assert changed_items(check.stdout, name) == ["tls certificate", "tls_max_sessions"]
        assert f"changed: [{name}] tls certificate: would be installed: CN=127.0.0.1, valid until " in check.stdout
        assert f"    + sha256: {fingerprints[name]}\n" in check.stdout
        assert shown(fleet, name) is None
    assert "    - absent\n    + subject: CN=127.0.0.1\n    + issuer: CN=127.0.0.1\n" in check.stdout
    assert "    + key type: EC\n" in check.stdout
    assert ("ok", "mail-a", "pop3s_port") in items(check.stdout)
    assert recap(check.stdout) == {"mail-a": (4, 2, 0, 0), "mail-b": (3, 2, 0, 0)}

    first = apply(fleet.tls_inventory, "--diff")
    assert first.exit_code == 0, first.stdout + first.stderr
    for name in ("mail-a", "mail-b"):
        assert changed_items(first.stdout, name) == ["tls certificate", "tls_max_sessions"]
        on_board = shown(fleet, name)
        assert on_board["sha256"] == fingerprints[name]
        # What the host says of a certificate is what the board will say of it.
        assert on_board == certificates.describe(certificates.to_der(*pems[name])[0])
        load_if_needed(fleet, name, first.stdout)
        assert fleet.config(name)["tls_max_sessions"] == 2
    for _, key_pem in pems.values():  # the key is never shown
        for line in key_material(key_pem):
            assert line not in check.stdout + first.stdout + first.stderr

    # TLS works, each board with its own certificate; plain logins are refused now (auto).
    for name in ("mail-a", "mail-b"):
        sim = fleet.sims[name]
        assert stls_login(sim, certs / f"{name}.pem") == fingerprints[name]
        with pytest.raises(poplib.error_proto):
            fleet.sims[name].pop3_login(*DEMO)
    context = ssl.create_default_context(cafile=str(certs / "mail-a.pem"))
    implicit = poplib.POP3_SSL("127.0.0.1", fleet.pop3s_port, context=context, timeout=20)
    try:
        implicit.user(DEMO[0])
        implicit.pass_(DEMO[1])
        implicit.quit()
    finally:
        implicit.close()

    second = apply(fleet.tls_inventory)
    assert second.exit_code == 0, second.stdout + second.stderr
    assert items(second.stdout, status="changed") == []
    assert "ok: [mail-a] tls certificate: CN=127.0.0.1, valid until " in second.stdout
    assert recap(second.stdout) == {"mail-a": (6, 0, 0, 0), "mail-b": (5, 0, 0, 0)}
    assert "note:" not in second.stdout
    # The README shows these commands.
    readme = (REPO / "README.md").read_text()
    for line in (
        "for b in mail-a mail-b; do pocketpost tls generate --hostname 127.0.0.1 --cert-out certs/$b.pem --key-out certs/$b.key; done",
        "pocketpost apply tls.yml --check --diff   # tls certificate and tls_max_sessions would change on each",
        "ansible-playbook -i hosts.yml tls-playbook.yml",
    ):
        assert line in readme, line


def test_a_new_certificate_is_detected_and_installed(fleet):
    certs = fleet.root / "certs"
    old = {name: make_certificate(certs, name) for name in ("mail-a", "mail-b")}
    first = apply(fleet.tls_inventory)
    assert first.exit_code == 0, first.stdout + first.stderr
    old_fp = fingerprint_of(old["mail-a"][0])

    # A new certificate (and key) for mail-a only, as when one is renewed.
    new_cert, new_key = make_certificate(certs, "mail-a")
    new_fp = fingerprint_of(new_cert)
    check = apply(fleet.tls_inventory, "--check", "--diff")
    assert check.exit_code == 0
    assert changed_items(check.stdout, "mail-a") == ["tls certificate"]
    assert changed_items(check.stdout, "mail-b") == []
    assert f"    - sha256: {old_fp}\n    + sha256: {new_fp}\n" in check.stdout
    assert "    - subject: " not in check.stdout  # the same subject: no change shown
    assert shown(fleet, "mail-a")["sha256"] == old_fp  # check mode changed nothing

    renewed = apply(fleet.tls_inventory, "--diff")
    assert renewed.exit_code == 0, renewed.stdout + renewed.stderr
    assert changed_items(renewed.stdout, "mail-a") == ["tls certificate"]
    assert "changed: [mail-a] tls certificate: installed: CN=127.0.0.1" in renewed.stdout
    for line in key_material(new_key) + key_material(old["mail-a"][1]):
        assert line not in check.stdout + renewed.stdout
    assert shown(fleet, "mail-a")["sha256"] == new_fp
    load_if_needed(fleet, "mail-a", renewed.stdout)
    assert stls_login(fleet.sims["mail-a"], certs / "mail-a.pem") == new_fp
    (fleet.root / "old-a.pem").write_bytes(old["mail-a"][0])
    with pytest.raises(ssl.SSLError):  # the old certificate is no longer served
        stls_login(fleet.sims["mail-a"], fleet.root / "old-a.pem")
    assert items(apply(fleet.tls_inventory).stdout, status="changed") == []


# ---- errors in the inventory: each names its line, nothing is sent


BOARD = "boards:\n  a:\n    board: unix\n    sim: sims/a\n"


@pytest.mark.parametrize(
    "text, errors",
    [
        (BOARD + "    tls:\n      cert: a.pem\n",
         ["inv.yml:5: boards.a.tls: give `cert` and `key` together (the key must belong to the certificate)"]),
        (BOARD + "    tls:\n      key: {file: a.key}\n", ["inv.yml:5: boards.a.tls: give `cert` and `key` together"]),
        (BOARD + "    tls:\n      cert: a.pem\n      key: a.key\n",
         ["inv.yml:7: boards.a.tls.key: a TLS key is a secret, never in an inventory itself: give {file: PATH}"]),
        (BOARD + "    tls:\n      cert: a.pem\n      key: {vault: a}\n",
         ["inv.yml:7: boards.a.tls.key: must be {env: VARIABLE} or {file: PATH}"]),
        (BOARD + "    tls:\n      cert: {env: CERT}\n      key: {env: KEY}\n",
         ["inv.yml:6: boards.a.tls.cert: must be the certificate's path (PEM or DER), as PATH or {file: PATH}"]),
        (BOARD + "    tls:\n      certificate: a.pem\n",
         ["inv.yml:6: boards.a.tls.certificate: unknown key; known: cert, key, require_for_auth, max_sessions,"]),
        (BOARD + "    tls:\n      require_for_auth: sometimes\n",
         ["inv.yml:6: boards.a.tls.require_for_auth: must be one of auto, yes, no"]),
        (BOARD + "    tls:\n      max_sessions: 13\n      handshake_timeout: 1\n",
         ["inv.yml:6: boards.a.tls.max_sessions: must be an integer 0..12, not 13",
          "inv.yml:7: boards.a.tls.handshake_timeout: must be an integer 5..300, not 1"]),
        (BOARD + "    tls:\n      pop3s_port: 99999\n", ["inv.yml:6: boards.a.tls.pop3s_port: must be an integer 0..65535"]),
        (BOARD + "    tls: on\n", ["inv.yml:5: boards.a.tls: must be a mapping"]),
    ],
)
def test_tls_schema_errors_name_their_line(tmp_path, monkeypatch, text, errors):
    (tmp_path / "inv.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = run_cli("apply", "inv.yml")
    assert_inventory_refused(result, errors)


def test_certificate_and_key_are_checked_before_any_board_is_contacted(tmp_path, monkeypatch):
    """A key that is not the certificate's, files that cannot be read or are no certificate:
    errors naming their lines (and never the key's contents), and no board is contacted."""
    _, a_key = make_certificate(tmp_path, "a")
    make_certificate(tmp_path, "b")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    monkeypatch.setenv("A_KEY", a_key.decode())
    monkeypatch.delenv("NOT_SET", raising=False)
    path = tmp_path / "inv.yml"
    path.write_text(
        "boards:\n"
        "  a:\n    board: unix\n    port: /nonexistent/console\n    tls:\n"
        "      cert: a.pem\n      key: {file: b.key}\n"                     # lines 6, 7
        "  b:\n    board: unix\n    port: /nonexistent/console\n    tls:\n"
        "      cert: {file: missing.pem}\n      key: {env: NOT_SET}\n"      # lines 12, 13
        "  c:\n    board: unix\n    port: /nonexistent/console\n    tls:\n"
        "      cert: garbage.pem\n      key: {env: A_KEY}\n"                # lines 18, 19
        "  d:\n    board: unix\n    port: /nonexistent/console\n    tls:\n"
        "      cert: a.pem\n      key: {file: a.pem}\n"                     # lines 24, 25
    )
    result = run_cli("apply", str(path))
    expected = [  # the last two end with what cryptography says of the file
        f"{path}:7: boards.a.tls.key.file: file b.key: the key does not belong to the certificate a.pem",
        f"{path}:12: boards.b.tls.cert.file: file missing.pem: cannot read {tmp_path / 'missing.pem'}: No such file or directory",
        f"{path}:13: boards.b.tls.key.env: environment variable NOT_SET: the environment variable NOT_SET is not set",
        f"{path}:18: boards.c.tls.cert: file garbage.pem: the certificate cannot be read: ",
        f"{path}:25: boards.d.tls.key.file: file a.pem: the key cannot be read (it must not be encrypted): ",
    ]
    assert_inventory_refused(result, expected)
    for line in key_material(a_key):
        assert line not in result.stderr
    # The right pair, from a file or the environment, is accepted; only the boards applied count.
    assert run_cli("apply", str(path), "--limit", "c,d").exit_code == EXIT_USAGE
    path.write_text(path.read_text().replace("key: {file: b.key}", "key: {env: A_KEY}"))
    only_a = run_cli("apply", str(path), "--limit", "a")
    assert only_a.exit_code == 1  # resolved; then its port does not exist
    assert "unreachable: [a] port /nonexistent/console does not exist" in only_a.stdout


def test_tls_merges_and_yaml_booleans():
    loaded = inventory.loads(
        "defaults:\n  tls: {require_for_auth: yes, max_sessions: 2}\n"
        "groups:\n  g:\n    tls: {max_sessions: 3, cert: g.pem, key: {file: g.key}}\n"
        "boards:\n  a:\n    board: unix\n    sim: s\n    groups: [g]\n    tls: {require_for_auth: no}\n"
        "  b:\n    board: unix\n    sim: t\n    groups: [g]\n    tls: {cert: b.pem, key: {env: B_KEY}}\n"
        "  c:\n    board: unix\n    sim: u\n",
        "inv.yml", "/base",
    )
    a, b, c = (loaded.boards[n] for n in "abc")
    assert a.config == {"require_tls_for_auth": "no", "tls_max_sessions": 3}
    assert (a.tls.cert.ref, a.tls.key.kind, a.tls.key.ref) == ("g.pem", "file", "g.key")
    assert (b.tls.cert.ref, b.tls.key.kind, b.tls.key.ref) == ("b.pem", "env", "B_KEY")  # replaced whole
    assert c.config == {"require_tls_for_auth": "yes", "tls_max_sessions": 2} and c.tls is None


def test_key_repr_and_module_parameters(tmp_path):
    """From the Ansible module the key is the PEM itself (Ansible keeps it secret); it never
    appears in a repr, and a path given instead is refused without being echoed."""
    cert_pem, key_pem = make_certificate(tmp_path, "m")
    spec = inventory.board_from_params(
        {"port": "/dev/null", "tls": {"cert": str(tmp_path / "m.pem"), "key": key_pem.decode(), "max_sessions": 2}}
    )
    assert spec.tls.fingerprint == fingerprint_of(cert_pem)
    assert spec.config == {"tls_max_sessions": 2}
    der_key = certificates.to_der(cert_pem, key_pem)[1]
    for text in (repr(spec), repr(spec.tls)):
        assert base64.b64encode(der_key).decode()[:40] not in text and "BEGIN" not in text
        assert der_key.hex()[:40] not in text
    with pytest.raises(inventory.InventoryError) as e:
        inventory.board_from_params({"port": "/dev/null", "tls": {"cert": str(tmp_path / "m.pem"), "key": "m.key"}})
    assert e.value.errors == [
        "tls.key: must be the key itself in PEM (such as {{ lookup('file', 'board.key') }}), not a path"
    ]


# ---- what the sims do not show: a board without heap for a new context, old firmware


class FakeBoard:
    """A board's console as apply uses it, with a certificate store; `applies` is what
    tls.commit answers ("reboot": the board had no heap to load it now)."""

    timeout = 5.0

    def __init__(self, applies="reboot"):
        self.applies = applies
        self.cert = None
        self.loaded = False  # whether the running board serves self.cert
        self.staged = {}
        self.commands = []
        self.commit_reply = None  # a reply to give instead

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def info(self):
        return {"board": "unix", "firmware": "0.1.0", "ports": {"pop3": 1, "smtp": 2},
                "tls": {"certificate": self.loaded, "required_for_auth": self.loaded, "sessions": 0}}

    def get_config(self):
        return {"config": {"tls_max_sessions": 1}, "overridden": []}

    def list_users(self):
        return []

    def set_config(self, key, value):
        return {"key": key, "value": value, "applies": "now", "overridden": False}

    def request(self, command, args=None):
        self.commands.append(command)
        if command == "tls.show":
            if self.cert is None:
                raise BoardError("NOTFOUND", "no TLS certificate is installed")
            return certificates.describe(self.cert)
        if command == "tls.begin":
            self.staged = {"cert": "", "key": ""}
        elif command == "tls.chunk":
            self.staged[args["file"]] += args["data"]
        elif command == "tls.commit":
            self.cert = base64.b64decode(self.staged["cert"])
            self.loaded = self.applies == "now"
            return self.commit_reply or dict(certificates.describe(self.cert), applies=self.applies)
        else:
            raise BoardError("UNKNOWN", f"unknown command {command}")
        return {}


@pytest.fixture
def fake_board(tmp_path, monkeypatch):
    """`pocketpost apply` of one board, `a`, whose console is a FakeBoard; its inventory is
    tmp_path/inv.yml with a certificate and key made here."""
    board = FakeBoard()
    make_certificate(tmp_path, "a")
    (tmp_path / "inv.yml").write_text(
        "boards:\n  a:\n    board: unix\n    port: fake\n"
        "    tls:\n      max_sessions: 1\n      cert: a.pem\n      key: {file: a.key}\n"
    )
    real_run = fleet_command.run
    monkeypatch.setattr(fleet_command, "run", lambda specs, **kw: real_run(
        specs, apply=partial(apply_board, opener=lambda port, timeout: board), **kw))
    board.inventory = tmp_path / "inv.yml"
    return board


def test_a_certificate_the_board_loads_at_its_next_boot(fake_board):
    note = "note: [a] tls certificate takes effect after a reboot: pocketpost --port fake reboot"
    first = apply(fake_board.inventory)
    assert first.exit_code == 0, first.stdout + first.stderr
    assert "changed: [a] tls certificate: installed: CN=127.0.0.1, valid until " in first.stdout
    assert "(takes effect after a reboot: the board had no room to load it now)" in first.stdout
    assert note in first.stdout
    assert fake_board.commands.count("tls.commit") == 1
    # Not rebooted yet: installed, so nothing to send, but still to be loaded.
    waiting = apply(fake_board.inventory)
    assert items(waiting.stdout, status="changed") == []
    assert "ok: [a] tls certificate: CN=127.0.0.1, valid until " in waiting.stdout
    assert "; not loaded yet: takes effect after a reboot" in waiting.stdout and note in waiting.stdout
    assert fake_board.commands.count("tls.commit") == 1
    fake_board.loaded = True  # rebooted
    after = apply(fake_board.inventory)
    assert "note:" not in after.stdout and "not loaded" not in after.stdout
    # Check mode sends nothing but tls.show.
    fake_board.cert, fake_board.commands = None, []
    check = apply(fake_board.inventory, "--check")
    assert "changed: [a] tls certificate: would be installed" in check.stdout and "note:" not in check.stdout
    assert fake_board.commands == ["tls.show"]


def test_a_board_that_cannot_show_or_keep_a_certificate_fails(fake_board):
    fake_board.commit_reply = {"sha256": "00:11", "applies": "now"}
    wrong = apply(fake_board.inventory)
    assert wrong.exit_code == 1
    assert "failed: [a] tls certificate: the board reports SHA-256 00:11 after installing" in wrong.stdout

    old_firmware = FakeBoard.request

    def no_tls(self, command, args=None):
        if command.startswith("tls."):
            raise BoardError("UNKNOWN", "unknown command " + command)
        return old_firmware(self, command, args)

    fake_board.request = no_tls.__get__(fake_board)
    result = apply(fake_board.inventory)
    assert result.exit_code == 1
    assert "failed: [a] tls certificate: board error UNKNOWN: unknown command tls.show" in result.stdout
    assert recap(result.stdout)["a"] == (2, 0, 0, 1)  # the board and tls_max_sessions still ok
