"""`pocketpost apply` and `pocketpost hash-password`: the README's two-board inventory applied to
two simulators at once, idempotence, check mode, drift, boards that fail alone, and the
inventory's schema errors (each naming its line, nothing sent)."""

import hashlib
import os
import poplib
import pty
import shutil
import smtplib
import time

import pytest

from pocketpost_host import inventory
from pocketpost_host.passwords import check_hash

from fleet_sims import (
    ALICE_PASSWORD, BOARDS, BOB_PASSWORD, PUPIL_PASSWORD, REPO, SECRETS, WIFI_PASSWORD, Fleet, apop_login, apply,
    assert_inventory_refused, changed_items, items, pop3_login, recap,
)
from sim_process import run_cli, run_pocketpost

EXIT_FAILED, EXIT_USAGE = 1, 2


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """The README's example folder with both boards running; BOB_PASSWORD set."""
    monkeypatch.setenv("BOB_PASSWORD", BOB_PASSWORD)
    running = Fleet(tmp_path / "fleet")
    try:
        yield running.start()
    finally:
        running.stop()




# ---- the README's inventory


def test_two_boards_then_nothing_to_change(fleet):
    first = apply(fleet.inventory)
    assert first.exit_code == 0, first.stdout + first.stderr
    assert changed_items(first.stdout, "mail-a") == sorted([
        "postmaster", "hostname", "max_message_size", "auth_max_failures", "user alice", "user bob",
    ])
    assert changed_items(first.stdout, "mail-b") == sorted([
        "postmaster", "hostname", "max_clients", "max_message_size", "auth_max_failures", "wifi_ssid",
        "wifi_password", "user alice", "user bob", "user pupil",
    ])
    assert ("ok", "mail-a", "network") in items(first.stdout)
    assert "note: [mail-b] hostname, max_clients, wifi_ssid, wifi_password take effect after a reboot" in first.stdout
    assert recap(first.stdout) == {"mail-a": (3, 6, 0, 0), "mail-b": (2, 10, 0, 0)}
    # The README shows this run: its secrets, its commands and this recap.
    readme = (REPO / "README.md").read_text()
    for line in (
        f"printf '{PUPIL_PASSWORD}\\n' > secrets/pupil.txt && printf '{WIFI_PASSWORD}\\n' > secrets/wifi.txt",
        f"export BOB_PASSWORD={BOB_PASSWORD}", "pocketpost apply lab.yml  ",
        "ANSIBLE_COLLECTIONS_PATH=../.. ansible-playbook -i hosts.yml playbook.yml",
        *[line for line in first.stdout.splitlines() if line.startswith(("RECAP", "mail-"))],
    ):
        assert line in readme, line

    # What the boards now hold, seen by their users and their consoles.
    for name in BOARDS:
        sim = fleet.sims[name]
        pop3_login(sim, "alice", ALICE_PASSWORD)
        apop_login(sim, "bob", BOB_PASSWORD)
        config = fleet.config(name)
        assert (config["postmaster"], config["max_message_size"], config["auth_max_failures"]) == ("alice", 5242880, 5)
        assert config["hostname"] == f"{name}.lab.example"
    pop3_login(fleet.sims["mail-b"], "pupil", PUPIL_PASSWORD)
    assert "pupil" not in fleet.users("mail-a")
    config_b = fleet.config("mail-b")
    assert (config_b["max_clients"], config_b["wifi_ssid"], config_b["wifi_password"]) == (2, "school-lab", "********")
    for secret in SECRETS:
        assert secret not in first.stdout + first.stderr

    # A second run, as users run it: everything is already so.
    second = run_pocketpost("apply", str(fleet.inventory))
    assert second.returncode == 0, second.stdout + second.stderr
    assert items(second.stdout, status="changed") == []
    assert recap(second.stdout) == {"mail-a": (9, 0, 0, 0), "mail-b": (12, 0, 0, 0)}
    assert "note:" not in second.stdout


def test_check_mode_changes_nothing(fleet):
    before = {name: (fleet.users(name), fleet.config(name)) for name in BOARDS}
    result = apply(fleet.inventory, "--check", "--diff")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "(check mode: nothing is changed)" in result.stdout.splitlines()[0]
    assert "changed: [mail-b] user pupil: would be created" in result.stdout
    assert "changed: [mail-a] max_message_size: would be set" in result.stdout
    assert "    - max_message_size: 10240000\n    + max_message_size: 5242880\n" in result.stdout
    assert "    - wifi_password: \"\"\n    + wifi_password: ********\n" in result.stdout
    assert recap(result.stdout) == {"mail-a": (3, 6, 0, 0), "mail-b": (2, 10, 0, 0)}
    assert {name: (fleet.users(name), fleet.config(name)) for name in BOARDS} == before
    # The diff masks every secret, hashes included.
    alice_hash = fleet.inventory.read_text().split("password_hash: \"")[1].split("\"")[0]
    for secret in (*SECRETS, alice_hash, alice_hash.split("$")[3]):
        assert secret not in result.stdout

    limited = apply(fleet.inventory, "--check", "--limit", "classroom")  # a group
    assert list(recap(limited.stdout)) == ["mail-b"]
    unknown = apply(fleet.inventory, "--limit", "mail-a,mail-z")
    assert unknown.exit_code == EXIT_USAGE
    assert "--limit: no board or group 'mail-z'" in unknown.stderr


def test_drift_is_detected_and_fixed(fleet):
    assert apply(fleet.inventory).exit_code == 0
    # By hand: alice deleted on mail-a, bob made again without APOP on mail-b, a setting changed,
    # and a user the inventory does not know on each board, with mail on mail-b.
    a, b = fleet.sims["mail-a"], fleet.sims["mail-b"]
    assert a.cli("user", "del", "alice").exit_code == 0
    assert a.cli("config", "set", "max_message_size", "99999").exit_code == 0
    assert b.cli("user", "del", "bob").exit_code == 0
    assert b.cli("user", "add", "bob", "--password-stdin", input="by hand\n").exit_code == 0
    for sim in (a, b):
        assert sim.cli("user", "add", "stray", "--password-stdin", input="stray pass\n").exit_code == 0
    with smtplib.SMTP("127.0.0.1", b.smtp_port, timeout=20) as smtp:
        smtp.sendmail("x@example.org", ["stray@lab.example"], "Subject: kept\r\n\r\nmail\r\n")

    check = apply(fleet.inventory, "--check")
    assert check.exit_code == 0
    assert changed_items(check.stdout, "mail-a") == ["max_message_size", "user alice"]
    assert changed_items(check.stdout, "mail-b") == ["user bob", "user stray"]
    assert "changed: [mail-b] user bob: would be: APOP enabled, password set from the inventory" in check.stdout
    assert "stray" in fleet.users("mail-b")  # still: that was check mode

    fix = apply(fleet.inventory)
    assert fix.exit_code == 0
    assert changed_items(fix.stdout, "mail-a") == ["max_message_size", "user alice"]
    assert changed_items(fix.stdout, "mail-b") == ["user bob", "user stray"]
    assert ("changed: [mail-b] user stray: removed, mailbox kept (not in the inventory: users_exclusive)"
            in fix.stdout)
    pop3_login(a, "alice", ALICE_PASSWORD)
    apop_login(b, "bob", BOB_PASSWORD)  # the inventory's password, as APOP secret too
    assert fleet.config("mail-a")["max_message_size"] == 5242880
    assert "stray" in fleet.users("mail-a")  # mail-a's users are not exclusive: left alone
    assert "stray" not in fleet.users("mail-b")
    with fleet.board("mail-b") as board:
        assert board.request("mailbox.stats", {"name": "stray"})["mailboxes"][0]["messages"] == 1  # kept

    again = apply(fleet.inventory)
    assert items(again.stdout, status="changed") == []

    # A user removed on purpose, with its mailbox.
    text = fleet.inventory.read_text().replace(
        "    users_exclusive: true", "    users_exclusive: true\n    purge: true"
    )
    fleet.write("lab.yml", text)
    assert b.cli("user", "add", "stray", "--password-stdin", input="back\n").exit_code == 0
    purged = apply(fleet.inventory, "--limit", "mail-b")
    assert "changed: [mail-b] user stray: removed, mailbox deleted" in purged.stdout
    with fleet.board("mail-b") as board:
        assert sorted(board.request("mailbox.stats")["mailboxes"], key=lambda m: m["name"]) == [
            {"name": n, "messages": 0, "octets": 0, "locked": False} for n in ("alice", "bob", "pupil")
        ]


def test_password_changed_by_hand(fleet):
    """The board never reveals a hash, but compares one with its own (user.check): a password
    changed by hand is seen. `update_password: on_create` (Ansible's default) leaves it and says
    so; `always` sets it back, once."""
    assert apply(fleet.inventory, "--limit", "mail-a").exit_code == 0
    a = fleet.sims["mail-a"]
    assert a.cli("user", "passwd", "alice", "--password-stdin", input="changed by hand\n").exit_code == 0
    seen = apply(fleet.inventory, "--limit", "mail-a")
    assert "ok: [mail-a] user alice: its password is not the inventory's (update_password: on_create leaves it)" in seen.stdout
    assert changed_items(seen.stdout, "mail-a") == []
    with pytest.raises(poplib.error_proto):
        pop3_login(a, "alice", ALICE_PASSWORD)

    fleet.write("lab.yml", fleet.inventory.read_text().replace(
        "      password_hash:", "      update_password: always\n      password_hash:", 1
    ))
    check = apply(fleet.inventory, "--limit", "mail-a", "--check")
    assert "changed: [mail-a] user alice: would be: password set: it was not the inventory's (changed on the board?)" in check.stdout
    with pytest.raises(poplib.error_proto):
        pop3_login(a, "alice", ALICE_PASSWORD)  # --check changed nothing
    fixed = apply(fleet.inventory, "--limit", "mail-a")
    assert "changed: [mail-a] user alice: password set: it was not the inventory's (changed on the board?)" in fixed.stdout
    assert changed_items(fixed.stdout, "mail-a") == ["user alice"]
    pop3_login(a, "alice", ALICE_PASSWORD)
    again = apply(fleet.inventory, "--limit", "mail-a")
    assert changed_items(again.stdout, "mail-a") == []  # the same password now: nothing to do
    assert ("ok", "mail-a", "user alice") in items(again.stdout)


def test_user_absent_and_wifi_password_update(fleet):
    assert apply(fleet.inventory, "--limit", "mail-b").exit_code == 0
    text = fleet.inventory.read_text()
    text = text.replace("      - name: pupil\n", "      - name: pupil\n        state: absent\n")
    text = text.replace("      ssid: school-lab\n", "      ssid: school-lab\n      update_password: always\n")
    fleet.write("lab.yml", text)
    result = apply(fleet.inventory, "--limit", "mail-b", "--diff")
    assert result.exit_code == 0
    assert changed_items(result.stdout, "mail-b") == ["user pupil", "wifi_password"]
    assert "changed: [mail-b] user pupil: removed, mailbox kept" in result.stdout
    assert "changed: [mail-b] wifi_password: set again (update_password: always)" in result.stdout
    assert "    - wifi_password: ********\n    + wifi_password: ********\n" not in result.stdout  # no fake diff
    assert "pupil" not in fleet.users("mail-b")
    again = apply(fleet.inventory, "--limit", "mail-b")
    assert ("ok", "mail-b", "user pupil") in items(again.stdout)


# ---- boards that fail alone


@pytest.fixture
def silent_port():
    """Terminal devices with nobody answering on the other side."""
    opened = []

    def make():
        master, slave = pty.openpty()
        opened.extend((master, slave))
        return os.ttyname(slave)

    yield make
    for fd in opened:
        os.close(fd)


def test_unreachable_boards_fail_alone(fleet, silent_port):
    text = fleet.inventory.read_text() + (
        "  mail-gone:\n    board: unix\n    sim: sims/not-running\n"
        f"  mail-silent:\n    board: unix\n    port: {silent_port()}\n    timeout: 0.5\n"
    )
    fleet.write("lab.yml", text)
    result = apply(fleet.inventory)
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == "Error: 2 of 4 boards failed: mail-gone (unreachable), mail-silent (unreachable)\n"
    summary = recap(result.stdout)
    assert summary["mail-a"] == (3, 6, 0, 0) and summary["mail-b"] == (2, 10, 0, 0)
    assert summary["mail-gone"] == summary["mail-silent"] == (0, 0, 1, 0)
    assert "unreachable: [mail-gone] port " in result.stdout and "does not exist" in result.stdout
    assert "unreachable: [mail-silent] the board on " in result.stdout
    pop3_login(fleet.sims["mail-b"], "pupil", PUPIL_PASSWORD)  # the others were applied


def test_forks_work_on_boards_at_once(tmp_path, silent_port):
    boards = "".join(
        f"  b{i}:\n    board: unix\n    port: {silent_port()}\n    timeout: 0.6\n" for i in range(3)
    )
    path = tmp_path / "silent.yml"
    path.write_text("boards:\n" + boards)
    started = time.monotonic()
    result = apply(path, "--forks", "3")
    parallel = time.monotonic() - started
    assert result.exit_code == EXIT_FAILED
    assert recap(result.stdout) == {f"b{i}": (0, 0, 1, 0) for i in range(3)}
    started = time.monotonic()
    apply(path, "--forks", "1")
    one_at_a_time = time.monotonic() - started
    assert one_at_a_time >= 1.7  # three greetings of 0.6 s, one after the other
    assert parallel < 1.5


def test_what_the_console_cannot_change_fails(tmp_path, monkeypatch):
    """A key the board's command line fixes (the sim's --domain), a board of another type and a
    host where nothing answers fail their items; the rest is applied."""
    monkeypatch.setenv("BOB_PASSWORD", BOB_PASSWORD)
    boards_dir = tmp_path / "boards"
    for name in ("unix", "esp32-test"):  # another board type than the sim's, for this test
        shutil.copytree(REPO / "boards" / "unix", boards_dir / name)
    monkeypatch.setenv("POCKETPOST_BOARDS", str(boards_dir))
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.start(options=())  # --domain left at pocketpost.local
        text = fleet.inventory.read_text().replace("    host: 127.0.0.1", "    host: 127.0.0.2")
        text = text.replace("    board: unix\n    sim: sims/mail-b", f"    board: esp32-test\n    port: {fleet.sims['mail-b'].link}")
        fleet.write("lab.yml", text)
        result = apply(fleet.inventory)
        assert result.exit_code == EXIT_FAILED
        assert result.stderr == "Error: 2 of 2 boards failed: mail-a, mail-b\n"
        out = result.stdout
        assert ("failed: [mail-a] domains: the board's command line sets domains to pocketpost.local for this "
                "run; the console cannot change it (start the board with lab.example)") in out
        assert "failed: [mail-a] network: POP3 on 127.0.0.2:" in out
        assert ("changed", "mail-a", "user alice") in items(out)
        assert f"failed: [mail-b] board: {fleet.sims['mail-b'].link} is a 'unix' board; the inventory says 'esp32-test'" in out
        assert recap(out)["mail-b"] == (0, 0, 0, 1)
        assert fleet.users("mail-b") == {}
    finally:
        fleet.stop()


# ---- the inventory's schema


BOARD = "boards:\n  a:\n    board: unix\n    sim: sims/a\n"


@pytest.mark.parametrize(
    "text, errors",
    [
        ("boards: [a, b]\n", ["inv.yml:1: boards: must be a mapping of board names to boards, not a list"]),
        ("- a\n", ["inv.yml:1: inventory: an inventory is a mapping with `boards:`"]),
        ("defaults: {}\n", ["inv.yml:1: inventory: an inventory needs `boards:`"]),
        ("boards:\n  a:\n    board: unix\n    sim: x\n  a:\n    board: unix\n",
         ["inv.yml:5: 'a' is given twice (first on line 2)"]),
        ("boards:\n  a:\n    board: unix\n   sim: x\n", ["inv.yml:4: not valid YAML: "]),
        (BOARD + "    colour: blue\n", ["inv.yml:5: boards.a.colour: unknown key; known: board, port, sim,"]),
        ("boards:\n  a:\n    board: esp99\n    port: /dev/ttyUSB0\n",
         ["inv.yml:3: boards.a.board: unknown board type 'esp99'; known: "]),
        ("boards:\n  a:\n    port: /dev/ttyUSB0\n", ["inv.yml:2: boards.a: a board needs `board:`"]),
        ("boards:\n  a:\n    board: unix\n    port: /dev/ttyUSB0\n    sim: x\n",
         ["inv.yml:2: boards.a: a board needs either `port:` (its serial console) or `sim:`"]),
        ("boards:\n  a b:\n    board: unix\n    sim: x\n", ["inv.yml:2: boards.a b: 'a b' is not a board name"]),
        (BOARD + "    limits:\n      max_clients: 13\n",
         ["inv.yml:6: boards.a.limits.max_clients: must be an integer 1..12, not 13"]),
        (BOARD + "    limits:\n      max_clients: '4'\n", ["inv.yml:6: boards.a.limits.max_clients: must be an integer"]),
        (BOARD + "    limits:\n      hostname: x\n", ["inv.yml:6: boards.a.limits.hostname: unknown key"]),
        (BOARD + "    domains: [good.example, bad_domain]\n", ["inv.yml:5: boards.a.domains: must be 1..8 domain names"]),
        (BOARD + "    hostname: true\n", ["inv.yml:5: boards.a.hostname: must be text, not a boolean"]),
        (BOARD + "    listen:\n      bind: localhost\n", ["inv.yml:6: boards.a.listen.bind: must be an IPv4 address"]),
        (BOARD + "    wifi:\n      ssid: lab\n      password: hunter22\n",
         ["inv.yml:7: boards.a.wifi.password: clear-text passwords are not allowed in an inventory"]),
        (BOARD + "    users:\n      - name: alice\n        password: wonderland\n",
         ["inv.yml:7: boards.a.users[0].password: clear-text passwords are not allowed"]),
        (BOARD + "    users:\n      - name: alice\n        password: {vault: x}\n",
         ["inv.yml:7: boards.a.users[0].password: must be {env: VARIABLE} or {file: PATH}"]),
        (BOARD + "    users:\n      - name: alice\n        password_hash: md5$abc\n",
         ["inv.yml:7: boards.a.users[0].password_hash: a password hash reads pbkdf2-sha256$"]),
        (BOARD + "    users:\n      - name: alice\n",
         ["inv.yml:6: boards.a.users[0]: a user needs password_hash (pocketpost hash-password) or password"]),
        (BOARD + "    users:\n      - name: Alice\n        password: {env: X}\n",
         ["inv.yml:6: boards.a.users[0].name: 'Alice' is not a user name"]),
        (BOARD + "    users:\n      - {name: al, password: {env: X}}\n      - {name: al, password: {env: Y}}\n",
         ["inv.yml:7: boards.a.users[1].name: user al is listed twice"]),
        (BOARD + "    users:\n      - name: al\n        password_hash: {env: H}\n        apop: true\n",
         ["inv.yml:8: boards.a.users[0].apop: APOP needs the password itself"]),
        (BOARD + "    users:\n      - name: al\n        password: {env: X}\n        update_password: sometimes\n",
         ["inv.yml:8: boards.a.users[0].update_password: must be one of on_create, always, not 'sometimes'"]),
        (BOARD + "    users_exclusive: yes please\n", ["inv.yml:5: boards.a.users_exclusive: must be true or false"]),
        (BOARD + "    groups: [lab]\n", ["inv.yml:5: boards.a.groups[0]: no group 'lab' (groups: none defined)"]),
        (BOARD + "    tls:\n      cert: c.pem\n", ["inv.yml:5: boards.a.tls: give `cert` and `key` together"]),
        ("boards:\n  a:\n    board: unix\n    sim: x\n    timeout: 0\n",
         ["inv.yml:5: boards.a.timeout: must be seconds, 0.1..600, not 0"]),
        # Every error at once, from defaults, groups and boards.
        ("defaults:\n  postmaster: Bob\ngroups:\n  g:\n    limits: 5\n" + BOARD + "    host: ''\n",
         ["inv.yml:2: defaults.postmaster: must be a user name", "inv.yml:5: groups.g.limits: must be a mapping",
          "inv.yml:10: boards.a.host: '' is not a host name or address"]),
    ],
)
def test_schema_errors_name_their_line(tmp_path, monkeypatch, text, errors):
    (tmp_path / "inv.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = run_cli("apply", "inv.yml")
    assert_inventory_refused(result, errors)


def test_secrets_are_resolved_before_any_board_is_contacted(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET", raising=False)
    path = tmp_path / "inv.yml"
    path.write_text(
        "boards:\n"
        "  a:\n    board: unix\n    port: /nonexistent/console\n    users:\n"
        "      - name: al\n        password: {env: NOT_SET}\n"
        "      - name: bo\n        password: {file: missing.txt}\n"
        "      - name: cy\n        password_hash: {file: hash.txt}\n"
        "  b:\n    board: unix\n    port: /nonexistent/console\n    users:\n"
        "      - name: dee\n        password: {env: NOT_SET}\n"
    )
    (tmp_path / "hash.txt").write_text("not a hash\n")
    result = run_cli("apply", str(path))
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.removeprefix("Error: ").splitlines() == [
        f"{path}:7: boards.a.users[0].password.env: environment variable NOT_SET: the environment variable NOT_SET is not set",
        f"{path}:9: boards.a.users[1].password.file: file missing.txt: cannot read {tmp_path / 'missing.txt'}: No such file or directory",
        f"{path}:11: boards.a.users[2].password_hash.file: file hash.txt: a password hash reads pbkdf2-sha256$ITERATIONS$SALT_HEX$KEY_HEX (pocketpost hash-password makes one)",
    ] + [f"{path}:17: boards.b.users[0].password.env: environment variable NOT_SET: the environment variable NOT_SET is not set"]
    # Only the boards applied need their secrets.
    limited = run_cli("apply", str(path), "--limit", "b")
    assert len(limited.stderr.splitlines()) == 1


def test_apop_password_longer_than_an_apop_secret_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LONG_PW", "p" * 300)
    path = tmp_path / "inv.yml"
    path.write_text(
        "boards:\n  a:\n    board: unix\n    port: /nonexistent/console\n    users:\n"
        "      - name: al\n        apop: true\n        password: {env: LONG_PW}\n"
        "      - name: bo\n        password: {env: LONG_PW}\n"  # no APOP: any length
    )
    result = run_cli("apply", str(path))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.removeprefix("Error: ").splitlines() == [
        f"{path}:8: boards.a.users[0].password.env: environment variable LONG_PW: an APOP secret has at most 256 characters; this password has 300",
    ]


def test_inventory_file_missing(tmp_path):
    result = run_cli("apply", str(tmp_path / "none.yml"))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == f"Error: {tmp_path / 'none.yml'}: cannot read the inventory: No such file or directory\n"


def test_groups_and_defaults_merge():
    loaded = inventory.loads(
        "defaults:\n  limits: {max_clients: 2, smtp_timeout: 60}\n  users:\n"
        "    - {name: al, password_hash: {env: H}}\n"
        "groups:\n  g1:\n    limits: {max_clients: 3}\n    users_exclusive: true\n"
        "  g2:\n    limits: {max_clients: 5}\n    users:\n      - {name: al, state: absent}\n"
        "boards:\n  a:\n    board: unix\n    sim: s\n    groups: [g1, g2]\n    limits: {smtp_timeout: 90}\n"
        "  b:\n    board: unix\n    sim: t\n",
        "inv.yml", "/base",
    )
    a, b = loaded.boards["a"], loaded.boards["b"]
    assert a.config == {"max_clients": 5, "smtp_timeout": 90}
    assert a.users["al"].state == "absent" and a.users_exclusive
    assert b.config == {"max_clients": 2, "smtp_timeout": 60}
    assert b.users["al"].state == "present" and not b.users_exclusive
    assert a.port == "/base/s/console"
    assert loaded.groups == {"g1": ["a"], "g2": ["a"]}
    assert [s.name for s in loaded.select(["g2"])] == ["a"]


# ---- hash-password


def test_hash_password():
    result = run_cli("hash-password", "--password-stdin", input="wonderland\n")
    assert result.exit_code == 0
    text = result.stdout.strip()
    assert check_hash(text) == text
    scheme, iterations, salt, key = text.split("$")
    assert (scheme, iterations) == ("pbkdf2-sha256", "2048")
    assert hashlib.pbkdf2_hmac("sha256", b"wonderland", bytes.fromhex(salt), 2048, 32).hex() == key
    assert run_cli("hash-password", "--password-stdin", input="wonderland\n").stdout != result.stdout  # salted

    prompted = run_cli("hash-password", "--iterations", "5000", input="typed\ntyped\n")
    assert prompted.exit_code == 0
    assert "typed" not in prompted.stdout + prompted.stderr  # not echoed
    scheme, iterations, salt, key = prompted.stdout.splitlines()[-1].split("$")
    assert hashlib.pbkdf2_hmac("sha256", b"typed", bytes.fromhex(salt), 5000, 32).hex() == key
    # As a command: the hash alone on stdout, so that `pocketpost hash-password > FILE` works.
    alone = run_pocketpost("hash-password", "--password-stdin", input="x y z\n")
    assert (alone.returncode, alone.stderr, alone.stdout.count("\n")) == (0, "", 1)
    assert check_hash(alone.stdout.strip())

    empty = run_cli("hash-password", "--password-stdin", input="\n")
    assert (empty.exit_code, empty.stderr) == (EXIT_USAGE, "Error: the password is empty\n")
