"""`pocketpost sim`: the firmware on the emulated board, its console link, and how it stops,
restarts and keeps its data."""

import io
import os
import signal
import smtplib
import socket
import stat
import subprocess
import threading
import time

import pytest
import serial
from pocketpost_host.sim import Simulator

from emulated_board import free_port
from sim_process import MPREMOTE, SimProcess, run_cli, run_pocketpost, stop_quietly


@pytest.fixture
def make_sim(tmp_path):
    """Makes simulators (tmp data folders unless given); stops them after the test."""
    sims = []

    def make(data=None, *options):
        sim = SimProcess(data or tmp_path / f"sim{len(sims)}", *options)
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        stop_quietly(sim)


def test_provision_over_the_console_link_then_log_in(make_sim):
    sim = make_sim(None, "--demo-user", "demo:demo-pass").start()
    assert f"POP3     127.0.0.1:{sim.pop3_port}" in sim.lines
    assert f"SMTP     127.0.0.1:{sim.smtp_port}" in sim.lines
    assert f"console  {sim.link}" in sim.lines
    assert any("user demo, password demo-pass" in line for line in sim.lines)
    assert stat.S_ISCHR(os.stat(sim.link).st_mode)  # the link leads to a terminal device

    result = run_pocketpost("--port", sim.link, "user", "add", "alice", "--password-stdin", input="wonderland\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "user alice added\n", "")

    pop3 = sim.pop3_login("alice", "wonderland")
    assert pop3.stat() == (0, 0)
    pop3.quit()
    sim.pop3_login("demo", "demo-pass").quit()
    sim.wait_for("INFO pop3: 127.0.0.1 login alice")  # the board's log lines reach sim's terminal


def test_code_in_place_runs_the_modules_from_an_image(make_sim):
    # --code-in-place: the board as a frozen build runs, its modules' bytecode outside the heap
    # (the emulated board's measure of it: tests/test_memory.py).
    def ready_free(sim):
        line = sim.lines[sim.wait_for("INFO boot: ready, ")]
        return int(line.split("ready, ")[1].split()[0])

    plain = make_sim(None, "--demo-user", "demo:demo-pass").start()
    from_files = ready_free(plain)
    plain.stop()
    sim = make_sim(None, "--code-in-place", "--demo-user", "demo:demo-pass").start()
    assert ready_free(sim) - from_files > 20000
    sim.pop3_login("demo", "demo-pass").quit()


def test_restart_keeps_users_and_mail(make_sim, tmp_path):
    data = tmp_path / "kept"
    sim = make_sim(data, "--demo-user", "demo:demo-pass").start()
    assert sim.cli("user", "add", "alice", "--password-stdin", input="wonderland\n").exit_code == 0
    with smtplib.SMTP("127.0.0.1", sim.smtp_port, timeout=20) as smtp:
        smtp.sendmail("bob@example.org", ["alice@pocketpost.local"], "Subject: kept\r\n\r\nstill here\r\n")
    assert sim.stop(signal.SIGINT) == 0
    assert any("INFO boot: interrupted (Ctrl-C)" in line for line in sim.lines)  # unmounted cleanly
    assert not os.path.lexists(sim.link)

    again = make_sim(data, "--demo-user", "demo:demo-pass").start()
    assert not any("user demo added" in line for line in again.lines)  # not created twice
    listing = again.cli("user", "list")
    assert listing.exit_code == 0
    assert sorted(row.split() for row in listing.stdout.splitlines()[1:]) == [["alice", "no", "1"], ["demo", "no", "0"]]
    pop3 = again.pop3_login("alice", "wonderland")
    assert pop3.retr(1)[1][-1] == b"still here"
    pop3.quit()
    assert again.stop(signal.SIGTERM) == 0
    assert any("INFO boot: interrupted (Ctrl-C)" in line for line in again.lines)


def test_console_reboot_restarts_the_firmware_behind_the_same_link(make_sim):
    sim = make_sim().start()
    assert sim.cli("user", "add", "alice", "--password-stdin", input="wonderland\n").exit_code == 0
    before = sim.firmware_pid()
    result = sim.cli("reboot")
    assert (result.exit_code, result.stdout) == (0, "rebooting\n")
    restarted = sim.wait_for("sim: the firmware stopped (reboot); starting it again")
    sim.wait_for("INFO boot: ready", start=restarted)
    assert sim.firmware_pid() != before
    assert sim.cli("info").exit_code == 0  # through the same console link
    sim.pop3_login("alice", "wonderland").quit()


def test_a_ctrl_c_as_the_relaying_begins_stops_the_board(tmp_path):
    """A Ctrl-C whose handler Python runs as the simulator begins to relay (right after its last
    announcement: when a script that waits for that line stops it at once) stops the board. Such
    a stop once went unnoticed, and the simulator relayed on for good."""

    class CtrlCAsRelayingBegins(Simulator):
        def pump(self, timeout, until, stopping=False):
            if timeout is None and not self.stop_requested:
                self.stop_requested = True  # what the handler of a Ctrl-C landing here does
            return super().pump(timeout, until, stopping)

    out = io.StringIO()
    sim = CtrlCAsRelayingBegins(data=tmp_path / "sim", pop3_port=free_port(), smtp_port=free_port(), out=out)
    runner = threading.Thread(target=sim.run, daemon=True)  # (no signal handlers off the main thread)
    runner.start()
    runner.join(60)
    if runner.is_alive():
        sim.proc.kill()  # the relaying ends with the board's process
        runner.join(10)
        pytest.fail("the simulator did not stop:\n" + out.getvalue())
    assert "Ctrl-C stops the board" in out.getvalue()
    assert out.getvalue().endswith(f"sim: the board stopped; its data stays in {tmp_path / 'sim'}\n"), out.getvalue()
    assert "killing it" not in out.getvalue()  # stopped cleanly, by its Ctrl-C


def test_firmware_that_dies_is_started_again(make_sim):
    sim = make_sim().start()
    os.kill(sim.firmware_pid(), signal.SIGKILL)
    restarted = sim.wait_for("sim: the firmware stopped (killed by signal 9); starting it again")
    sim.wait_for("INFO boot: ready", start=restarted)
    assert sim.cli("info").exit_code == 0


def test_hung_firmware_is_reset_by_the_watchdog(make_sim):
    """A firmware whose event loop stops (here: the process is stopped, as a hung board is)
    stops feeding its watchdog; the simulator resets it, as an ESP32's timer would."""
    sim = make_sim(None, "--watchdog", "2").start()
    assert sim.cli("user", "add", "alice", "--password-stdin", input="wonderland\n").exit_code == 0
    time.sleep(3)  # serving normally longer than the watchdog's limit: no reset
    assert not any("sim: watchdog" in line for line in sim.lines)
    hung = sim.firmware_pid()
    os.kill(hung, signal.SIGSTOP)
    reset = sim.wait_for("sim: watchdog: not fed for 2 s; resetting the board", timeout=10)
    restarted = sim.wait_for("sim: the firmware stopped (watchdog reset); starting it again", start=reset)
    sim.wait_for("INFO boot: ready", start=restarted)
    assert sim.firmware_pid() != hung
    sim.pop3_login("alice", "wonderland").quit()


def mpremote(link, *args):
    return subprocess.run([MPREMOTE, "connect", link, *args], capture_output=True, text=True, timeout=60)


def test_mpremote_gets_the_repl_and_the_firmware_comes_back(make_sim):
    sim = make_sim().start()
    # mpremote's Ctrl-C stops the firmware (storage unmounted); the REPL takes the console.
    result = mpremote(sim.link, "resume", "exec", "print(1+1)")
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    sim.wait_for("INFO boot: interrupted (Ctrl-C)")
    stopped = run_cli("--port", sim.link, "--timeout", "1.5", "info")
    assert stopped.exit_code == 3
    assert "shows the MicroPython REPL" in stopped.stderr
    # As on a board, `mpremote reset` (machine.reset()) starts the firmware again.
    result = mpremote(sim.link, "reset")
    assert result.returncode == 0, result.stderr
    sim.wait_for("sim: machine.reset(); starting the firmware")
    assert sim.cli("info").exit_code == 0

    # Without `resume` mpremote soft-resets in the raw REPL first: the board stays there
    # without the firmware, as a board does.
    result = mpremote(sim.link, "exec", "print(6*7)")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr
    # Ctrl-D at the friendly REPL is a soft reset: the firmware starts again.
    with serial.Serial(sim.link, timeout=0.5, exclusive=True) as console:
        console.write(b"\x04")
        seen = b""
        deadline = time.monotonic() + 20
        while b"INFO boot: ready" not in seen and time.monotonic() < deadline:
            seen += console.read(256)
    assert b"MPY: soft reboot\r\n" in seen
    assert b"INFO boot: ready" in seen
    assert sim.cli("info").exit_code == 0


def test_stops_when_the_firmware_cannot_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_pocketpost(
            "sim", "--data", str(tmp_path / "sim"), "--pop3-port", str(taken.getsockname()[1]),
            "--smtp-port", str(free_port()),
        )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: the firmware stopped before it was ready (crash): ")
    assert "EADDRINUSE" in result.stderr


def test_one_simulator_per_data_folder(make_sim):
    sim = make_sim().start()
    result = run_pocketpost("sim", "--data", str(sim.data), "--pop3-port", "1", "--smtp-port", "2")
    assert result.returncode == 1
    assert result.stderr == f"Error: another pocketpost sim is running on {sim.data}\n"
    assert sim.cli("info").exit_code == 0  # the running one is untouched


def test_micropython_missing_or_too_old(tmp_path):
    result = run_cli("sim", "--data", str(tmp_path), "--micropython", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: MicroPython executable {tmp_path / 'nothing'} not found or not executable\n"

    old = tmp_path / "micropython-1.19"
    old.write_text("#!/bin/sh\necho micropython 1 19 1 6 3 True True\n")
    old.chmod(0o755)
    result = run_cli("sim", "--data", str(tmp_path), env={"POCKETPOST_MICROPYTHON": str(old)})
    assert result.exit_code == 1
    assert result.stderr == f"Error: {old} is MicroPython 1.19.1; pocketpost needs 1.23 or newer\n"


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--bind", "300.1.1.1", "must be an IPv4 address"),
        ("--pop3-port", "0", "0 is not in the range 1<=x<=65535"),
        ("--domain", "bad_domain", "must be 1..8 domain names"),
        ("--sd-size", "64X", "is not a size"),
        ("--heap", "lots", "is not a size"),
        ("--demo-user", "demo", "expected NAME:PASSWORD"),
        ("--demo-user", "Demo:pw", "is not a user name"),
        ("--demo-user", "demo:", "the password is empty"),
    ],
)
def test_sim_options_are_checked(tmp_path, option, value, message):
    result = run_cli("sim", "--data", str(tmp_path / "data"), option, value)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()  # refused before anything was made
