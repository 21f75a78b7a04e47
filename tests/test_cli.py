"""The `pocketpost` provisioning commands over a board's console: against the simulator's
console link, and every way they fail (one line on stderr, a non-zero exit)."""

import json
import os
import poplib
import pty
import signal
import smtplib
import socket
import subprocess
import time

import pytest
import serial
from serial.tools.list_ports_common import ListPortInfo

from pocketpost_host import provision, transport
from pocketpost_host.cli import main
from pocketpost_host.errors import BoardError

from emulated_board import free_port
from sim_process import POCKETPOST, SimProcess, run_cli, stop_quietly

EXIT_USAGE, EXIT_TIMEOUT, EXIT_BOARD, EXIT_PORT = 2, 3, 4, 5


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One simulator for this module's tests (each uses its own user names)."""
    running = SimProcess(tmp_path_factory.mktemp("cli") / "sim").start()
    yield running
    stop_quietly(running)


def one_error_line(result, exit_code):
    """The single stderr line of a failed command, checking its exit code."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: ")
    return result.stderr[len("Error: "):].rstrip("\n")


def apop_login(port, user, secret):
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        client.apop(user, secret)
    except BaseException:
        client.close()
        raise
    return client


# ---- users


def test_user_lifecycle(sim):
    added = sim.cli("user", "add", "carol", "--password-stdin", input="first pass\n")
    assert (added.exit_code, added.stdout, added.stderr) == (0, "user carol added\n", "")
    sim.pop3_login("carol", "first pass").quit()

    listing = json.loads(sim.cli("user", "list", "--json").stdout)
    assert {"name": "carol", "apop": False, "messages": 0} in listing
    table = sim.cli("user", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "APOP", "MESSAGES"]
    assert ["carol", "no", "0"] in [row.split() for row in table[1:]]

    changed = sim.cli("user", "passwd", "carol", "--password-stdin", input="second pass\n")
    assert (changed.exit_code, changed.stdout, changed.stderr) == (0, "password of carol changed\n", "")
    with pytest.raises(poplib.error_proto):
        sim.pop3_login("carol", "first pass")
    sim.pop3_login("carol", "second pass").quit()

    deleted = sim.cli("user", "del", "carol", "--purge")
    assert (deleted.exit_code, deleted.stdout) == (0, "user carol deleted with its mailbox\n")
    assert "carol" not in sim.cli("user", "list").stdout
    assert one_error_line(sim.cli("user", "del", "carol"), EXIT_BOARD) == "board error NOTFOUND: no user carol"
    missing = sim.cli("user", "passwd", "carol", "--password-stdin", input="x\n")
    assert one_error_line(missing, EXIT_BOARD).startswith("board error NOTFOUND")


def test_user_add_prompts_twice_without_echo(sim):
    result = sim.cli("user", "add", "dave", input="typed secret\ntyped secret\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Password: \nRepeat the password: \nuser dave added\n"  # nothing echoed
    sim.pop3_login("dave", "typed secret").quit()


def test_user_add_prompt_refuses_different_passwords(sim):
    result = sim.cli("user", "add", "erin", input="one\ntwo\n")
    assert result.exit_code != 0
    assert "Error: The two entered values do not match." in result.stdout + result.stderr
    assert "erin" not in sim.cli("user", "list").stdout


def test_apop_secret_follows_the_password(sim):
    added = sim.cli("user", "add", "frank", "--password-stdin", "--apop", input="apop one\n")
    assert added.exit_code == 0
    assert added.stderr.startswith("warning: APOP needs the password itself")
    apop_login(sim.pop3_port, "frank", "apop one").quit()

    changed = sim.cli("user", "passwd", "frank", "--password-stdin", input="apop two\n")
    assert changed.exit_code == 0
    assert changed.stderr.startswith("warning: APOP needs the password itself")
    apop_login(sim.pop3_port, "frank", "apop two").quit()
    with pytest.raises(poplib.error_proto):
        apop_login(sim.pop3_port, "frank", "apop one")


def test_duplicate_user_is_the_boards_error(sim):
    assert sim.cli("user", "add", "grace", "--password-stdin", input="pw\n").exit_code == 0
    again = sim.cli("user", "add", "grace", "--password-stdin", input="pw\n")
    assert one_error_line(again, EXIT_BOARD) == "board error EXISTS: user grace exists"


@pytest.mark.parametrize("name", [".hidden", "bob.", "Alice", "a b", "a/b", "é", "x" * 65, ""])
@pytest.mark.parametrize("command", [["user", "add"], ["user", "del"], ["user", "passwd"]])
def test_bad_user_names_are_refused_before_anything_is_sent(tmp_path, command, name):
    # The port does not exist: the name's error proves nothing was opened or sent.
    result = run_cli("--port", str(tmp_path / "no-port"), *command, "--", name, input="pw\n")
    assert "is not a user name" in one_error_line(result, EXIT_USAGE)


def test_apop_secret_longer_than_the_board_keeps_is_refused_before_anything_is_sent(tmp_path):
    result = run_cli("--port", str(tmp_path / "no-port"), "user", "add", "ida", "--apop", "--password-stdin", input="s" * 257 + "\n")
    assert one_error_line(result, EXIT_USAGE) == "an APOP secret has at most 256 characters; this password has 257"


def test_password_of_an_apop_user_must_fit_the_secret(sim):
    assert sim.cli("user", "add", "jack", "--password-stdin", "--apop", input="s" * 256 + "\n").exit_code == 0
    result = sim.cli("user", "passwd", "jack", "--password-stdin", input="t" * 300 + "\n")
    assert one_error_line(result, EXIT_USAGE) == "jack logs in with APOP too: an APOP secret has at most 256 characters; this password has 300"
    apop_login(sim.pop3_port, "jack", "s" * 256).quit()  # unchanged


def test_empty_password_is_refused(tmp_path):
    result = run_cli("--port", str(tmp_path / "no-port"), "user", "add", "henry", "--password-stdin", input="\n")
    assert one_error_line(result, EXIT_USAGE) == "the password is empty"


# ---- configuration, status, logs


def test_config_get_and_set(sim):
    reply = json.loads(sim.cli("config", "get", "--json").stdout)
    assert set(reply["config"]) == set(provision.CONFIG_KEYS)
    # The sim's command line fixes its network (the TLS and submission ports are off unless given).
    assert sorted(reply["overridden"]) == [
        "bind", "domains", "pop3_port", "pop3s_port", "smtp_port", "smtps_port", "submission_port"]
    for key, value in reply["config"].items():
        if key not in reply["overridden"]:
            assert value == provision.CONFIG_KEYS[key].default, key

    table = sim.cli("config", "get").stdout.splitlines()
    assert table[0].split() == ["KEY", "VALUE"]
    assert "pop3_port" in [row.split()[0] for row in table if "(set by the board's command line)" in row]

    result = sim.cli("config", "set", "max_recipients", "200")
    assert (result.exit_code, result.stdout) == (0, "max_recipients = 200 (takes effect now)\n")
    assert sim.cli("config", "get", "max_recipients").stdout == "200\n"
    assert json.loads(sim.cli("config", "get", "max_recipients", "--json").stdout) == {
        "key": "max_recipients", "value": 200, "overridden": False,
    }

    result = sim.cli("config", "set", "max_clients", "6")
    assert (result.exit_code, result.stdout) == (0, "max_clients = 6 (takes effect after a reboot)\n")
    result = sim.cli("config", "set", "wifi_password", "hunter22")
    assert result.stdout == "wifi_password = ******** (takes effect after a reboot)\n"
    result = sim.cli("config", "set", "smtp_port", "2525")
    assert result.exit_code == 0
    assert result.stderr == (
        "note: the board's command line sets smtp_port for this run; the stored value applies without it\n"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["config", "set", "max_clients", "13"], "max_clients must be an integer 1..12"),
        (["config", "set", "max_clients", "many"], "max_clients must be an integer 1..12"),
        (["config", "set", "domains", "a.example,bad_name"], "domains must be 1..8 domain names"),
        (["config", "set", "bind", "localhost"], "bind must be an IPv4 address"),
        (["config", "set", "colour", "blue"], "unknown key 'colour'; known: auth_fail_delay_ms"),
        (["config", "get", "colour"], "unknown key 'colour'"),
    ],
)
def test_bad_config_is_refused_before_anything_is_sent(tmp_path, args, message):
    result = run_cli("--port", str(tmp_path / "no-port"), *args)
    assert message in one_error_line(result, EXIT_USAGE)


def test_info(sim):
    status = json.loads(sim.cli("info", "--json").stdout)
    assert status["board"] == "unix"
    assert status["ports"] == {"pop3": sim.pop3_port, "smtp": sim.smtp_port}
    assert status["storage"]["state"] == "ok"
    rows = dict(line.split(None, 1) for line in sim.cli("info").stdout.splitlines())
    assert rows["firmware"] == f"{status['firmware']} on board unix"
    assert rows["listening"] == f"127.0.0.1: POP3 {sim.pop3_port}, SMTP {sim.smtp_port}"
    assert rows["storage"].startswith("ok, ")
    assert rows["sd_image"] == status["sd_image"]


def test_logs_tail_and_follow(sim):
    assert sim.cli("user", "add", "ivan", "--password-stdin", input="pw\n").exit_code == 0
    tail = sim.cli("logs", "-n", "3")
    assert tail.exit_code == 0
    assert len(tail.stdout.splitlines()) == 3
    assert any("console: user ivan added" in line for line in tail.stdout.splitlines())

    follower = subprocess.Popen(
        [POCKETPOST, "--port", sim.link, "logs", "-n", "1", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = follower.stdout.readline()
        assert " INFO " in first
        sim.pop3_login("ivan", "pw").quit()  # new log lines while following
        deadline = time.monotonic() + 20
        seen = []
        while not any("login ivan" in line for line in seen) and time.monotonic() < deadline:
            seen.append(follower.stdout.readline())
        assert any("login ivan" in line for line in seen)
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends --follow
        assert follower.wait(20) == 0
        assert follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        follower.stdout.close()
        follower.stderr.close()


def test_commands_while_the_board_serves_mail(sim):
    assert sim.cli("user", "add", "judy", "--password-stdin", input="pw\n").exit_code == 0
    pop3 = sim.pop3_login("judy", "pw")  # a session holding judy's mailbox
    with smtplib.SMTP("127.0.0.1", sim.smtp_port, timeout=20) as smtp:
        smtp.sendmail("x@example.org", ["judy@pocketpost.local"], "Subject: a\r\n\r\nb\r\n")
        smtp.mail("x@example.org")  # a transaction left open meanwhile
        listing = json.loads(sim.cli("user", "list", "--json").stdout)
        assert {"name": "judy", "apop": False, "messages": 1} in listing
        assert json.loads(sim.cli("info", "--json").stdout)["clients"] == 2
        busy = sim.cli("user", "del", "judy", "--purge")
        assert one_error_line(busy, EXIT_BOARD) == "board error BUSY: mailbox judy is in use by a POP3 session"
    pop3.quit()


def test_port_from_the_environment(sim):
    result = run_cli("info", "--json", env={"POCKETPOST_PORT": sim.link})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["board"] == "unix"


# ---- ports and boards that fail


def test_port_busy(sim):
    with serial.Serial(sim.link, exclusive=True):
        result = sim.cli("info")
    assert one_error_line(result, EXIT_PORT).startswith(f"port {sim.link} is busy: another program has it open")


@pytest.mark.parametrize(
    "port, message",
    [("/dev/null", "/dev/null is not a serial port"), ("gopher://board", "cannot open gopher://board: ")],
)
def test_not_a_port(port, message):
    assert one_error_line(run_cli("--port", port, "info"), EXIT_PORT).startswith(message)


@pytest.fixture
def silent_board():
    """A terminal device with nobody answering on the other side."""
    master, slave = pty.openpty()
    yield os.ttyname(slave)
    os.close(slave)
    os.close(master)


# Every command that talks to the board, with valid arguments.
BOARD_COMMANDS = [
    ["user", "add", "kim", "--password-stdin"],
    ["user", "list"],
    ["user", "del", "kim"],
    ["user", "passwd", "kim", "--password-stdin"],
    ["config", "get"],
    ["config", "get", "hostname"],
    ["config", "set", "hostname", "mail.example.org"],
    ["info"],
    ["logs"],
    ["logs", "--follow"],
    ["reboot"],
]


@pytest.mark.parametrize("command", BOARD_COMMANDS, ids=" ".join)
def test_every_command_fails_cleanly_without_a_port(tmp_path, command):
    port = tmp_path / "ttyUSB9"
    result = run_cli("--port", str(port), *command, input="pw\n")
    assert one_error_line(result, EXIT_PORT) == (
        f"port {port} does not exist (is the board plugged in, or `pocketpost sim` running?)"
    )


@pytest.mark.parametrize("command", BOARD_COMMANDS, ids=" ".join)
def test_every_command_fails_cleanly_when_the_board_does_not_answer(silent_board, command):
    started = time.monotonic()
    result = run_cli("--port", silent_board, "--timeout", "0.3", *command, input="pw\n")
    assert time.monotonic() - started < 3
    assert one_error_line(result, EXIT_TIMEOUT) == (
        f"the board on {silent_board} is not answering (no reply within 0.3 s)"
    )


def test_socket_url_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        result = run_cli("--port", f"socket://127.0.0.1:{server.getsockname()[1]}", "--timeout", "1", "info")
    assert "is not answering" in one_error_line(result, EXIT_TIMEOUT)
    closed = run_cli("--port", f"socket://127.0.0.1:{free_port()}", "info")
    assert "Connection refused" in one_error_line(closed, EXIT_PORT)


# ---- finding the board's port


def usb_port(device, vid=None, pid=None, description="n/a"):
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.description = vid, pid, description
    return info


@pytest.fixture
def plugged(monkeypatch):
    """Sets the serial ports serial.tools.list_ports reports."""
    ports = []
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: list(ports))
    return ports


def test_autodetect_uses_the_one_esp32_adapter(plugged, silent_board):
    plugged += [usb_port("/dev/ttyS0"), usb_port("/dev/ttyACM0", 0x2341, 0x0043, "Arduino Uno"),
                usb_port(silent_board, 0x10C4, 0xEA60, "CP2102 USB to UART")]
    assert transport.detect_port() == silent_board
    result = run_cli("--timeout", "1", "info")  # opens the adapter found: nobody answers there
    assert one_error_line(result, EXIT_TIMEOUT).startswith(f"the board on {silent_board} is not answering")


def test_autodetect_without_a_board(plugged):
    plugged += [usb_port("/dev/ttyS0"), usb_port("/dev/ttyACM0", 0x2341, 0x0043, "Arduino Uno")]
    result = run_cli("info")
    assert one_error_line(result, EXIT_PORT) == (
        "no ESP32 serial adapter found (seen: /dev/ttyACM0 (2341:0043 Arduino Uno), /dev/ttyS0 (no USB ids)); "
        "plug the board in or give --port"
    )
    plugged.clear()
    assert "(seen: no serial ports at all)" in one_error_line(run_cli("info"), EXIT_PORT)


def test_autodetect_with_several_boards(plugged):
    plugged += [usb_port("/dev/ttyUSB1", 0x1A86, 0x7523), usb_port("/dev/ttyACM0", 0x303A, 0x1001)]
    result = run_cli("info")
    assert one_error_line(result, EXIT_PORT) == (
        "2 ESP32 serial adapters found, choose one with --port: /dev/ttyACM0 (303A:1001 Espressif USB "
        "Serial/JTAG), /dev/ttyUSB1 (1A86:7523 WCH CH340)"
    )


# ---- the library entry point


def test_main_returns_the_exit_code(sim, capsys):
    assert main(["--port", sim.link, "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["board"] == "unix"
    assert main(["user", "add", ".x"]) == EXIT_USAGE
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "pocketpost, version 0.1.0\n"


# ---- the host's tables agree with the firmware


def firmware_schema():
    """config_schema.SCHEMA as the firmware defines it, read by MicroPython from the source."""
    from pocketpost_host import firmware

    script = "import json; from pocketpost.config_schema import SCHEMA; print(json.dumps(SCHEMA))"
    result = subprocess.run(
        [firmware.find_micropython(), "-c", script], cwd=firmware.source_dir(),
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# The firmware's kinds of value, in the order of its constants KIND_INT, KIND_TEXT, KIND_DOMAIN,
# KIND_DOMAINS, KIND_ADDRESS, KIND_USER, KIND_CHOICE (firmware/pocketpost/config_schema.py).
FIRMWARE_KINDS = ["int", "text", "domain", "domains", "address", "user", "choice", "host", "email", "networks"]


def test_config_keys_match_the_firmware_schema():
    schema = firmware_schema()
    assert set(schema) == set(provision.CONFIG_KEYS)
    for key, (default, kind, lo, hi, applies, secret) in schema.items():
        host = provision.CONFIG_KEYS[key]
        expected = (default, FIRMWARE_KINDS[kind], applies, secret)
        assert (host.default, host.kind, host.applies, host.secret) == expected, key
        if host.kind in ("int", "text"):
            assert (host.lo, host.hi) == (lo, hi), key
        if host.kind == "choice":
            assert list(host.choices) == hi, key


def samples(key):
    """Text a person might type for `key`: good values, edge values and bad ones."""
    spec = provision.CONFIG_KEYS[key]
    if spec.kind == "int":
        return [str(spec.lo), str(spec.hi), str(spec.lo - 1), str(spec.hi + 1), "-1", "1.5", "", "12abc", "٣"]
    if spec.kind == "text":
        return ["", "home-wifi", "x" * spec.hi, "x" * (spec.hi + 1), "tab\there"]
    if spec.kind == "domain":
        return ["mail.example.org", "Mail.Example.ORG", "-bad.example", "a..b", "x" * 64 + ".org", "", "u_s.org"]
    if spec.kind == "domains":
        return ["a.example,b.example", " a.example , B.example ", "", ",", "a.example," * 9, "bad_domain"]
    if spec.kind == "address":
        return ["0.0.0.0", "127.0.0.1", "256.1.1.1", "1.2.3", "a.b.c.d", ""]
    if spec.kind == "choice":
        return list(spec.choices) + ["maybe", "", "AUTO"]
    if spec.kind == "host":
        return ["smtp.example.org", "SMTP.Example.org", "192.168.1.5", "", "bad host", "a..b"]
    if spec.kind == "email":
        return ["me@example.org", "", "no-at-sign", "a b@example.org", "<x>@example.org", "me@bad_domain"]
    if spec.kind == "networks":
        return ["192.168.1.0/24", " 10.0.0.0/8 , 192.168.1.7", "", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/x"]
    return ["postmaster", "bob.smith", "Bob", ".x", ""]


def test_host_checks_agree_with_the_firmware(make_board):
    board = make_board().start()
    for key in provision.CONFIG_KEYS:
        for text in samples(key):
            try:
                provision.convert_config_value(key, text)
                host_accepts = True
            except ValueError:
                host_accepts = False
            try:
                board.request("config.set", key=key, value=text)
                board_accepts = True
            except BoardError as e:
                assert e.code == "INVALID", e
                board_accepts = False
            assert host_accepts == board_accepts, (key, text)


def test_user_name_check_agrees_with_the_firmware(make_board):
    board = make_board().start()
    names = ["a", "a" * 64, "a" * 65, "bob.smith", "b_o-b", ".x", "x.", "Bob", "a b", "a/b", "é", "-x", "_x", "0"]
    for name in names:
        try:
            provision.check_user_name(name)
            host_accepts = True
        except ValueError:
            host_accepts = False
        try:
            board.add_user(name, "pw")
            board_accepts = True
        except BoardError as e:
            assert e.code == "INVALID", e
            board_accepts = False
        assert host_accepts == board_accepts, name
