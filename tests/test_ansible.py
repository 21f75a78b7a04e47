"""The Ansible collection (ansible_collections/pocketpost/appliance): ansible-core from PyPI runs
the README's playbook (examples/fleet) against two simulators: changes, idempotence, check and
diff mode, drift, and a board that fails alone; and the TLS playbook beside it."""

import json
import os
import poplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pocketpost_host import tls as certificates
from pocketpost_host.errors import BoardError

from fleet_sims import ALICE_PASSWORD, BOARDS, BOB_PASSWORD, REPO, Fleet, apop_login, pop3_login, recap
from wire import send_mail

BIN = Path(sys.executable).parent


@pytest.fixture
def fleet(tmp_path):
    running = Fleet(tmp_path / "fleet")
    try:
        yield running.start()
    finally:
        running.stop()


def ansible(tool, *args, cwd, state, timeout=120, env=None):
    """Runs an Ansible command in `cwd` with the collection of this checkout, no configuration
    but an empty file, and its own files in the folder `state`."""
    home = Path(state) / "ansible-home"
    config = Path(state) / "ansible.cfg"
    config.write_text("[defaults]\n")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",  # ansible-core refuses a locale that is not UTF-8
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "BOB_PASSWORD": BOB_PASSWORD,
        **(env or {}),
    }
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def playbook(fleet, *args, book="playbook.yml"):
    return ansible("ansible-playbook", "-i", "hosts.yml", book, *args, cwd=fleet.root, state=fleet.root.parent)


def test_playbook_on_two_sims(fleet):
    first = playbook(fleet)
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    for name in BOARDS:
        pop3_login(fleet.sims[name], "alice", ALICE_PASSWORD)
        apop_login(fleet.sims[name], "bob", BOB_PASSWORD)
        config = fleet.config(name)
        assert (config["hostname"], config["postmaster"], config["max_message_size"]) == (
            f"{name}.lab.example", "alice", 5242880,
        )
    assert fleet.config("mail-b")["max_clients"] == 2

    again = playbook(fleet, "-v")
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout) == {"mail-a": (1, 0, 0, 0), "mail-b": (1, 0, 0, 0)}
    result = json.loads(again.stdout.split("ok: [mail-a] => ", 1)[1].splitlines()[0])
    assert result["changed"] is False and result["reboot_required"] is False
    assert {(i["item"], i["status"]) for i in result["items"]} >= {("user alice", "ok"), ("network", "ok")}

    # Drift: alice deleted by hand on mail-a, a limit changed by hand on mail-b.
    assert fleet.sims["mail-a"].cli("user", "del", "alice").exit_code == 0
    assert fleet.sims["mail-b"].cli("config", "set", "auth_max_failures", "9").exit_code == 0
    check = playbook(fleet, "--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    assert "--- before: mail-a: user alice\n+++ after: mail-a: user alice\n" in check.stdout
    assert "-auth_max_failures: 9\n+auth_max_failures: 5\n" in check.stdout
    assert "+password: ********\n" in check.stdout
    assert BOB_PASSWORD not in check.stdout and "$2048$" not in check.stdout
    assert "alice" not in fleet.users("mail-a")  # check mode changed nothing
    assert fleet.config("mail-b")["auth_max_failures"] == 9

    fix = playbook(fleet)
    assert recap(fix.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    pop3_login(fleet.sims["mail-a"], "alice", ALICE_PASSWORD)
    assert fleet.config("mail-b")["auth_max_failures"] == 5
    assert recap(playbook(fleet).stdout) == {"mail-a": (1, 0, 0, 0), "mail-b": (1, 0, 0, 0)}


EXCLUSIVE_PLAYBOOK = """\
- name: only alice, bob purged, Wi-Fi set
  hosts: mail-a
  gather_facts: false
  tasks:
    - name: Exclusive users
      pocketpost.appliance.board:
        name: "{{ inventory_hostname }}"
        board: unix
        sim: "{{ playbook_dir }}/sims/{{ inventory_hostname }}"
        host: 127.0.0.1
        users_exclusive: true
        users:
          - name: alice
            password: wonderland
          - name: bob
            state: absent
            purge: true
        wifi:
          ssid: lab-net
          password: not-in-the-log
"""


def test_exclusive_users_purge_and_wifi(fleet):
    """users_exclusive removes a user added by hand, state absent with purge removes bob and
    his mailbox, and the Wi-Fi settings are stored (the password never shown)."""
    assert playbook(fleet).returncode == 0
    sim = fleet.sims["mail-a"]
    send_mail(sim.smtp_port, b"Subject: for bob\r\n\r\nx", rcpts=("bob@lab.example",))
    assert sim.cli("user", "add", "carol", "--password-stdin", input="by hand\n").exit_code == 0
    fleet.write("exclusive.yml", EXCLUSIVE_PLAYBOOK)
    result = playbook(fleet, "-v", book="exclusive.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert recap(result.stdout) == {"mail-a": (1, 1, 0, 0)}
    assert "not-in-the-log" not in result.stdout
    assert set(fleet.users("mail-a")) == {"alice"}
    with fleet.board("mail-a") as board:
        with pytest.raises(BoardError, match="NOTFOUND"):
            board.request("mailbox.stats", {"name": "bob"})
    config = fleet.config("mail-a")
    assert (config["wifi_ssid"], config["wifi_password"]) == ("lab-net", "********")
    assert set(fleet.users("mail-b")) >= {"alice", "bob"}  # not in this play
    again = playbook(fleet, book="exclusive.yml")
    assert recap(again.stdout) == {"mail-a": (1, 0, 0, 0)}


def test_one_board_fails_alone(fleet):
    fleet.sims["mail-b"].stop()
    fleet.write("hosts.yml", fleet.root.joinpath("hosts.yml").read_text().replace(
        "  vars:\n", "    mail-c:\n      hostname: Not_A_Hostname\n  vars:\n"
    ))
    result = playbook(fleet)
    assert result.returncode == 2, result.stdout + result.stderr  # Ansible's "a host failed"
    assert recap(result.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (0, 0, 0, 1), "mail-c": (0, 0, 0, 1)}
    assert "unreachable: port " in result.stdout and "does not exist" in result.stdout
    assert "hostname: must be a domain name such as mail.example.org" in result.stdout
    pop3_login(fleet.sims["mail-a"], "alice", ALICE_PASSWORD)


def test_tls_playbook(fleet):
    """examples/fleet/tls-playbook.yml: each board's certificate installed once (check mode
    first), the key never shown, TLS verified afterwards, and a key that is not the
    certificate's failing its board alone."""
    certs = fleet.root / "certs"
    certs.mkdir()
    fingerprints, keys = {}, []
    for name in BOARDS:
        cert_pem, key_pem = certificates.generate("127.0.0.1", days=30)
        (certs / f"{name}.pem").write_bytes(cert_pem)
        (certs / f"{name}.key").write_bytes(key_pem)
        fingerprints[name] = certificates.fingerprint(certificates.to_der(cert_pem, key_pem)[0])
        keys += [line for line in key_pem.decode().splitlines() if not line.startswith("-----")]

    def tls_show(name):
        with fleet.board(name) as board:
            try:
                return board.request("tls.show")["sha256"]
            except BoardError:
                return None

    check = playbook(fleet, "--check", "--diff", book="tls-playbook.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    for name in BOARDS:
        assert f"+sha256: {fingerprints[name]}\n" in check.stdout
        assert tls_show(name) is None  # check mode installed nothing
    assert "-tls_max_sessions: 1\n+tls_max_sessions: 2\n" in check.stdout

    first = playbook(fleet, "-v", "--diff", book="tls-playbook.yml")
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout) == {"mail-a": (1, 1, 0, 0), "mail-b": (1, 1, 0, 0)}
    for line in keys:
        assert line not in check.stdout + first.stdout + first.stderr
    for name in BOARDS:
        assert tls_show(name) == fingerprints[name]
        result = json.loads(first.stdout.split(f"changed: [{name}] => ", 1)[1].splitlines()[0])
        assert ("tls certificate", "changed") in {(i["item"], i["status"]) for i in result["items"]}
        sim = fleet.sims[name]
        with fleet.board(name) as board:
            tls = board.info()["tls"]
            loaded = tls["certificate"] and not tls["pending_reboot"]
        assert result["reboot_required"] is (not loaded)
        if not loaded:  # the board had no heap to load it at once
            start = len(sim.lines)
            assert sim.cli("reboot").exit_code == 0
            sim.wait_for("INFO boot: ready", start=start, timeout=30)
        client = poplib.POP3("127.0.0.1", sim.pop3_port, timeout=20)
        try:
            client.stls(ssl.create_default_context(cafile=str(certs / f"{name}.pem")))
            assert certificates.fingerprint(client.sock.getpeercert(binary_form=True)) == fingerprints[name]
            client.quit()
        finally:
            client.close()

    again = playbook(fleet, book="tls-playbook.yml")
    assert recap(again.stdout) == {"mail-a": (1, 0, 0, 0), "mail-b": (1, 0, 0, 0)}

    _, other_key = certificates.generate("127.0.0.1", days=30)
    (certs / "mail-b.key").write_bytes(other_key)
    mismatch = playbook(fleet, book="tls-playbook.yml")
    assert mismatch.returncode == 2, mismatch.stdout + mismatch.stderr
    assert recap(mismatch.stdout) == {"mail-a": (1, 0, 0, 0), "mail-b": (0, 0, 0, 1)}
    assert "tls.key: the key does not belong to the certificate " in mismatch.stdout
    for line in other_key.decode().splitlines()[1:-1]:
        assert line not in mismatch.stdout + mismatch.stderr
    assert tls_show("mail-b") == fingerprints["mail-b"]


def test_module_documentation(tmp_path):
    result = ansible("ansible-doc", "pocketpost.appliance.board", cwd=tmp_path, state=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MODULE pocketpost.appliance.board" in result.stdout
    assert "Reads the state of a pocketpost board" in result.stdout
    assert result.stderr == ""
