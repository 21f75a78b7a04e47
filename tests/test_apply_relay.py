"""The relay in inventories and the Ansible module (issue 12): examples/fleet/relay.yml and
relay-playbook.yml applied to two simulators: check mode, the smarthost's settings, its password
(a secret: never in the file, the output or a diff) and its CA certificates (PEM converted to
DER and installed as `pocketpost relay ca install` does), idempotence, drift, a message relayed
afterwards with the password the inventory gave, and the schema's errors, each naming its line."""

import smtplib
import time

import pytest

from pocketpost_host import inventory
from pocketpost_host import tls as certificates

import smarthost
from emulated_board import free_port
from fleet_sims import Fleet, apply, assert_inventory_refused, changed_items, items, recap
from sim_process import run_cli
from smarthost import PASSWORD, USER, Smarthost
from test_ansible import ansible


# aiosmtpd warns (in its own thread) of AUTH without STARTTLS in its own setup.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

RELAY_ITEMS = sorted([
    "relay_host", "relay_port", "relay_user", "relay_sender", "relay_networks", "relay_password",
    "relay ca certificates",
])


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """The example folder with both boards running, the smarthost's CA as certs/relay-ca.pem,
    relay.yml pointing at a free port, RELAY_PASSWORD set."""
    monkeypatch.setenv("RELAY_PASSWORD", PASSWORD)
    running = Fleet(tmp_path / "fleet")
    certs = running.root / "certs"
    certs.mkdir()
    running.cert, running.key, cert_pem = smarthost.make_certificate(certs, "localhost")
    (certs / "relay-ca.pem").write_bytes(cert_pem)
    running.ca_fingerprint = certificates.fingerprint(certificates.to_der(cert_pem, running.key.read_bytes())[0])
    running.relay_port = free_port()
    text = (running.root / "relay.yml").read_text()
    assert "    port: 2587 " in text
    running.relay_inventory = running.write("relay.yml", text.replace("    port: 2587 ", f"    port: {running.relay_port} "))
    try:
        yield running.start()
    finally:
        running.stop()




def relay_state(fleet, name):
    with fleet.board(name) as board:
        config = board.get_config()["config"]
        ca = board.request("relay.ca.show")["certificates"]
    return {k: v for k, v in config.items() if k.startswith("relay_")}, [c["sha256"] for c in ca]


def relay_one(fleet, name, host):
    """A message from the LAN (127.0.0.1 is in the inventory's networks) to another domain:
    the smarthost gets it, after AUTH with the inventory's password."""
    sim = fleet.sims[name]
    before = len(host.handler.messages)
    with smtplib.SMTP("127.0.0.1", sim.smtp_port, timeout=20) as s:
        assert s.sendmail("alice@lab.example", ["bob@example.org"], f"Subject: from {name}\r\n\r\nhi\r\n") == {}
    deadline = time.monotonic() + 20
    while len(host.handler.messages) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(host.handler.messages) == before + 1, "\n".join(sim.lines[-30:])
    mail_from, rcpts, content = host.handler.messages[-1]
    assert (mail_from, rcpts) == ("lab@provider.example", ["bob@example.org"])
    assert content.endswith(f"Subject: from {name}\r\n\r\nhi\r\n".encode())


def test_relay_applied_to_two_boards(fleet):
    check = apply(fleet.relay_inventory, "--check", "--diff")
    assert check.exit_code == 0, check.stdout + check.stderr
    for name in ("mail-a", "mail-b"):
        assert changed_items(check.stdout, name) == RELAY_ITEMS
        assert relay_state(fleet, name)[1] == []  # check mode installed nothing
    assert "    - relay_password: \"\"\n    + relay_password: ********\n" in check.stdout
    assert f"    - relay_port: 587\n    + relay_port: {fleet.relay_port}\n" in check.stdout
    assert "    - relay_networks: \"\"\n    + relay_networks: 127.0.0.0/8\n" in check.stdout
    assert "    - absent\n    + subject: CN=localhost\n" in check.stdout
    assert f"    + sha256: {fleet.ca_fingerprint}\n" in check.stdout
    assert ("ok", "mail-a", "relay_security") in items(check.stdout)  # starttls is the default
    assert ("ok", "mail-a", "relay_rate") in items(check.stdout)  # so is 30

    first = apply(fleet.relay_inventory, "--diff")
    assert first.exit_code == 0, first.stdout + first.stderr
    assert recap(first.stdout) == {"mail-a": (3, 7, 0, 0), "mail-b": (3, 7, 0, 0)}
    assert "changed: [mail-a] relay_password: set\n" in first.stdout
    assert "changed: [mail-a] relay ca certificates: installed: CN=localhost, valid until " in first.stdout
    assert "note:" not in first.stdout  # every relay setting applies at once
    for output in (check, first):
        assert PASSWORD not in output.stdout + output.stderr
    for name in ("mail-a", "mail-b"):
        config, ca = relay_state(fleet, name)
        assert ca == [fleet.ca_fingerprint]
        assert config["relay_password"] == "********"
        assert (config["relay_host"], config["relay_port"], config["relay_security"], config["relay_user"],
                config["relay_sender"], config["relay_networks"], config["relay_rate"]) == (
            "localhost", fleet.relay_port, "starttls", USER, "lab@provider.example", ["127.0.0.0/8"], 30)
        assert not any(PASSWORD in line for line in fleet.sims[name].lines)

    # Again: everything is so already; the password is not compared (the board never shows it).
    again = apply(fleet.relay_inventory)
    assert again.exit_code == 0
    assert items(again.stdout, status="changed") == []
    assert recap(again.stdout) == {"mail-a": (10, 0, 0, 0), "mail-b": (10, 0, 0, 0)}
    assert "ok: [mail-a] relay_password: set (the board does not reveal it: not compared)" in again.stdout
    assert "ok: [mail-a] relay ca certificates: CN=localhost, valid until " in again.stdout

    # The password the board got is the inventory's: the smarthost takes its AUTH.
    with Smarthost(fleet.relay_port, fleet.cert, fleet.key, "starttls") as host:
        relay_one(fleet, "mail-a", host)
        assert ("AUTH", "PLAIN") in host.handler.commands


def test_relay_drift_and_update_password(fleet, monkeypatch):
    assert apply(fleet.relay_inventory, "--limit", "mail-a").exit_code == 0
    a = fleet.sims["mail-a"]
    # By hand: another CA, another port, another password.
    other = fleet.root / "certs" / "other.pem"
    other.write_bytes(certificates.generate("other.example", days=30)[0])
    assert a.cli("relay", "ca", "install", str(other)).exit_code == 0
    assert a.cli("config", "set", "relay_port", "2600").exit_code == 0
    assert a.cli("config", "set", "relay_password", "changed by hand").exit_code == 0
    fix = apply(fleet.relay_inventory, "--limit", "mail-a", "--diff")
    assert fix.exit_code == 0, fix.stdout + fix.stderr
    assert changed_items(fix.stdout, "mail-a") == ["relay ca certificates", "relay_port"]
    assert "    - subject: CN=other.example\n" in fix.stdout and "    + subject: CN=localhost\n" in fix.stdout
    assert relay_state(fleet, "mail-a")[1] == [fleet.ca_fingerprint]
    # update_password: always sets it back, at every run (the board cannot compare it).
    fleet.write("relay.yml", fleet.relay_inventory.read_text().replace(
        "    password: {env: RELAY_PASSWORD}", "    password: {env: RELAY_PASSWORD}\n    update_password: always"))
    for _ in range(2):
        run = apply(fleet.relay_inventory, "--limit", "mail-a", "--diff")
        assert changed_items(run.stdout, "mail-a") == ["relay_password"]
        assert "changed: [mail-a] relay_password: set again (update_password: always)" in run.stdout
        assert "      relay_password: ********\n" in run.stdout  # the same, as a diff shows it
        assert PASSWORD not in run.stdout + run.stderr
    with Smarthost(fleet.relay_port, fleet.cert, fleet.key, "starttls") as host:
        relay_one(fleet, "mail-a", host)
    # An empty password is cleared (a LAN smarthost without AUTH), and stays so.
    fleet.write("relay.yml", fleet.relay_inventory.read_text().replace("    password: {env: RELAY_PASSWORD}", '    password: ""'))
    cleared = apply(fleet.relay_inventory, "--limit", "mail-a")
    assert "changed: [mail-a] relay_password: cleared" in cleared.stdout
    assert relay_state(fleet, "mail-a")[0]["relay_password"] == ""
    assert ("ok", "mail-a", "relay_password") in items(apply(fleet.relay_inventory, "--limit", "mail-a").stdout)


BOARD = "boards:\n  a:\n    board: unix\n    port: /nonexistent/console\n"


@pytest.mark.parametrize(
    "text, errors",
    [
        (BOARD + "    relay:\n      host: smtp.example.org\n      password: hunter2\n",
         ["inv.yml:7: boards.a.relay.password: the smarthost's password is a secret, never in an inventory itself: "
          "give {env: VARIABLE} or {file: PATH}"]),
        (BOARD + "    relay:\n      password: {vault: x}\n", ["inv.yml:6: boards.a.relay.password: must be {env: VARIABLE} or {file: PATH}"]),
        (BOARD + "    relay:\n      security: ssl\n      port: 0\n",
         ["inv.yml:6: boards.a.relay.security: must be one of starttls, tls, plain",
          "inv.yml:7: boards.a.relay.port: must be an integer 1..65535, not 0"]),
        (BOARD + "    relay:\n      networks: [10.0.0.0/33]\n",
         ["inv.yml:6: boards.a.relay.networks: 10.0.0.0/33 is not an IPv4 network"]),
        (BOARD + "    relay:\n      sender: no-at-sign\n", ["inv.yml:6: boards.a.relay.sender: must be a mail address"]),
        (BOARD + "    relay:\n      ca: []\n", ["inv.yml:6: boards.a.relay.ca: must name at least one PEM file"]),
        (BOARD + "    relay:\n      ca: [a.pem, {env: CA}]\n",
         ["inv.yml:6: boards.a.relay.ca[1]: must be the path of a PEM file of CA certificates"]),
        (BOARD + "    relay:\n      smarthost: x\n", ["inv.yml:6: boards.a.relay.smarthost: unknown key; known: password, update_password, ca, host,"]),
        (BOARD + "    relay:\n      update_password: sometimes\n", ["inv.yml:6: boards.a.relay.update_password: must be one of on_create, always"]),
        (BOARD + "    relay: on\n", ["inv.yml:5: boards.a.relay: must be a mapping"]),
    ],
)
def test_relay_schema_errors_name_their_line(tmp_path, monkeypatch, text, errors):
    (tmp_path / "inv.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = run_cli("apply", "inv.yml")
    assert_inventory_refused(result, errors)
    assert "hunter2" not in result.stderr


def test_relay_secrets_and_ca_files_are_checked_before_any_board_is_contacted(tmp_path, monkeypatch):
    nine = b"".join(certificates.generate(f"ca{i}.example", days=30)[0] for i in range(9))
    (tmp_path / "nine.pem").write_bytes(nine)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "one.pem").write_bytes(certificates.generate("one.example", days=30)[0])
    monkeypatch.delenv("NOT_SET", raising=False)
    path = tmp_path / "inv.yml"
    path.write_text(
        "boards:\n"
        "  a:\n    board: unix\n    port: /nonexistent/console\n    relay:\n"
        "      password: {env: NOT_SET}\n      ca: missing.pem\n"           # lines 6, 7
        "  b:\n    board: unix\n    port: /nonexistent/console\n    relay:\n"
        "      ca: [one.pem, garbage.pem]\n"                                 # line 12
        "  c:\n    board: unix\n    port: /nonexistent/console\n    relay:\n"
        "      ca: [one.pem, nine.pem]\n"                                    # line 17
    )
    result = run_cli("apply", str(path))
    expected = [
        f"{path}:6: boards.a.relay.password.env: environment variable NOT_SET: the environment variable NOT_SET is not set",
        f"{path}:7: boards.a.relay.ca: file missing.pem: cannot read {tmp_path / 'missing.pem'}: No such file or directory",
        f"{path}:12: boards.b.relay.ca[1]: file garbage.pem: the CA certificates cannot be read: ",
        f"{path}:17: boards.c.relay.ca[1]: file nine.pem: a file of 1 to 8 CA certificates is needed, not 9",
    ]
    assert_inventory_refused(result, expected)


def test_relay_merges_and_module_parameters(tmp_path):
    loaded = inventory.loads(
        "defaults:\n  relay: {host: smtp.example.org, password: {env: P}, ca: a.pem, rate: 10}\n"
        "boards:\n  a:\n    board: unix\n    sim: s\n    relay: {port: 465, security: tls, networks: [10.0.0.0/8, 192.168.1.7]}\n"
        "  b:\n    board: unix\n    sim: t\n    relay: {password: {file: b.txt}, update_password: always, ca: [b.pem, c.pem]}\n",
        "inv.yml", "/base",
    )
    a, b = loaded.boards["a"], loaded.boards["b"]
    assert a.config == {"relay_host": "smtp.example.org", "relay_rate": 10, "relay_port": 465, "relay_security": "tls",
                        "relay_networks": ["10.0.0.0/8", "192.168.1.7/32"]}
    assert (a.relay_password.kind, a.relay_password.ref, a.relay_update_password) == ("env", "P", "on_create")
    assert [f.ref for f in a.relay_ca.files] == ["a.pem"]
    assert (b.relay_password.kind, b.relay_update_password) == ("file", "always")
    assert [f.ref for f in b.relay_ca.files] == ["b.pem", "c.pem"]  # replaced whole

    # From Ansible the password is the text itself (no_log), the CA files absolute paths.
    cert_pem = certificates.generate("ca.example", days=30)[0]
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    spec = inventory.board_from_params({
        "port": "/dev/null", "relay": {"host": "smtp.example.org", "password": "s3cret-value", "networks": ["10.1.0.0/16"],
                                       "ca": [str(tmp_path / "ca.pem")], "update_password": "on_create"},
    })
    assert spec.relay_password == "s3cret-value"
    assert "s3cret-value" not in repr(spec)
    assert spec.config["relay_networks"] == ["10.1.0.0/16"]
    assert [c["subject"] for c in spec.relay_ca.shown] == ["CN=ca.example"]
    assert len(spec.relay_ca.ders) == 1 and spec.relay_ca.ders[0] not in repr(spec).encode()


def test_relay_playbook(fleet):
    """examples/fleet/relay-playbook.yml: check mode, the relay set, the password never shown,
    then nothing to change."""
    env = {"RELAY_PASSWORD": PASSWORD}
    args = ("-i", "hosts.yml", "relay-playbook.yml", "-e", f"relay_port={fleet.relay_port}")
    check = ansible("ansible-playbook", *args, "--check", "--diff", cwd=fleet.root, state=fleet.root.parent, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    assert "+relay_password: ********\n" in check.stdout
    assert f"+sha256: {fleet.ca_fingerprint}\n" in check.stdout
    assert relay_state(fleet, "mail-a")[1] == []

    first = ansible("ansible-playbook", *args, "-v", "--diff", cwd=fleet.root, state=fleet.root.parent, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    for output in (check, first):
        assert PASSWORD not in output.stdout + output.stderr
    for name in ("mail-a", "mail-b"):
        config, ca = relay_state(fleet, name)
        assert ca == [fleet.ca_fingerprint] and config["relay_password"] == "********"
        assert config["relay_port"] == fleet.relay_port

    again = ansible("ansible-playbook", *args, cwd=fleet.root, state=fleet.root.parent, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout) == {"mail-a": (1, 0, 0, 0), "mail-b": (1, 0, 0, 0)}
    with Smarthost(fleet.relay_port, fleet.cert, fleet.key, "starttls") as host:
        relay_one(fleet, "mail-b", host)
