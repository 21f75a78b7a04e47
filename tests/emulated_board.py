"""The test harness: the firmware running on the unix board in a real MicroPython process, its
console on pipes, its servers on free loopback ports."""

import os
import poplib
import queue
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

from pocketpost_host import firmware
from pocketpost_host.console import ConsoleClient
from pocketpost_host.passwords import hash_password

ROOT = Path(__file__).resolve().parents[1]
# The heap the firmware gets in tests: the README's stated floor unless overridden.
HEAP = os.environ.get("POCKETPOST_TEST_HEAP", firmware.DEFAULT_HEAP)
# POCKETPOST_TEST_CODE=in-place: the firmware's modules run from a read-only image, as a frozen
# build's run from flash (boards/unix/in_place.py), instead of from .mpy files in the heap.
CODE_IN_PLACE = os.environ.get("POCKETPOST_TEST_CODE", "mpy") == "in-place"
# Tests store hashes with the fewest iterations the firmware accepts, to keep logins fast.
TEST_ITERATIONS = 1000


class _POP3(poplib.POP3):
    """poplib's client, which closes its socket when the greeting is an error (poplib leaves
    it open, and the test's caller cannot reach it to close it)."""

    def __init__(self, host, port, timeout):
        try:
            super().__init__(host, port, timeout=timeout)
        except poplib.error_proto:
            self.close()
            raise


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=20):
    """predicate()'s first true value, asked every 50 ms for `timeout` seconds; else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


class QueuePort:
    """The pyserial-like port the console client reads: chunks the output thread queued."""

    def __init__(self, chunks, write):
        self.chunks = chunks
        self._write = write
        self.timeout = 1.0
        self.in_waiting = 0

    def read(self, n=1):
        try:
            return self.chunks.get(timeout=self.timeout)
        except queue.Empty:
            return b""

    def write(self, data):
        self._write(data)
        return len(data)


class EmulatedBoard:
    def __init__(self, app_dir, data_dir, heap=HEAP, code_in_place=CODE_IN_PLACE, **options):
        self.app_dir = app_dir
        self.data = Path(data_dir)
        self.heap = heap
        self.code_in_place = code_in_place
        # The TLS and submission ports are off unless a test asks for them.
        self.options = {
            "bind": "127.0.0.1",
            "pop3_port": free_port(),
            "smtp_port": free_port(),
            "pop3s_port": 0,
            "smtps_port": 0,
            "submission_port": 0,
        }
        self.options.update(options)
        self.proc = None
        self.lines = []  # every console line since the first start
        self.exit_codes = []

    @property
    def pop3_port(self):
        return self.options["pop3_port"]

    @property
    def smtp_port(self):
        return self.options["smtp_port"]

    # The MicroPython executable (None: firmware.find_micropython's).
    exe = None

    def command(self):
        """The command line that starts the firmware (subclasses start other boards)."""
        return firmware.board_command(
            self.exe or firmware.find_micropython(), self.app_dir, self.data, self.heap, code_in_place=self.code_in_place, **self.options
        )

    def ready_free(self):
        """The heap free after the last boot, as its "ready" log line says."""
        lines = [line for line in self.lines if " INFO boot: ready, " in line]
        return int(lines[-1].split("ready, ")[1].split()[0])

    # Environment of the firmware's process (None: this one's).
    env = None

    def start(self, timeout=30, until="INFO boot: ready"):
        """Starts the firmware and waits for a console line containing `until`."""
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
        )
        chunks = queue.Queue()
        self._reader = threading.Thread(target=self._read_output, args=(self.proc, chunks), daemon=True)
        self._reader.start()
        self.console = ConsoleClient(QueuePort(chunks, self._write_console), timeout=20)
        self.console.on_line = lambda line: None
        deadline = time.monotonic() + timeout
        while True:
            line = self.console.read_line(min(deadline, time.monotonic() + 0.5))
            if line is None and (time.monotonic() > deadline or self.proc.poll() is not None):
                time.sleep(0.2)
                raise AssertionError("firmware did not start:\n" + "\n".join(self.lines[-30:]))
            if line is not None and until in line:
                return self

    def _read_output(self, proc, chunks):
        partial = b""
        while True:
            data = proc.stdout.read1(65536)
            if not data:
                break
            chunks.put(data)
            partial += data
            *complete, partial = partial.split(b"\n")
            self.lines.extend(line.decode("utf-8", "replace").rstrip("\r") for line in complete)

    def _write_console(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, command, **args):
        return self.console.request(command, args)

    def add_user(self, name, password, apop=None):
        args = {"name": name, "hash": hash_password(password, TEST_ITERATIONS)}
        if apop is not None:
            args["apop"] = apop
        return self.request("user.add", **args)

    def set_config(self, **values):
        for key, value in values.items():
            self.request("config.set", key=key, value=value)

    def log_has(self, text):
        return any(text in line for line in self.lines)

    def wait_log(self, text, timeout=5):
        """True once a console line contains `text` (lines arrive through a reader thread)."""
        deadline = time.monotonic() + timeout
        while not self.log_has(text):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def heap_free(self):
        return self.request("info")["heap_free"]

    def settled_heap(self, timeout=10):
        """The free heap once no client is connected and the sessions' code has been unloaded
        (3 s after the last client): the best of three readings 0.2 s apart (the console's info
        collects garbage first; a refused connection's last task may still be ending)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.request("info")
            if not info["clients"] and not info["sessions_code"]:
                break
            assert time.monotonic() < deadline, f"clients or their code still there after {timeout} s: {info}"
            time.sleep(0.2)
        readings = []
        for _ in range(3):
            time.sleep(0.2)
            readings.append(self.heap_free())
        return max(readings)

    # ---- clients

    def pop3(self, timeout=20):
        return _POP3("127.0.0.1", self.pop3_port, timeout=timeout)

    def smtp(self, timeout=20):
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=timeout)

    def connect(self, port, timeout=20):
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    # ---- stopping

    def stop(self, timeout=15):
        """Ctrl-C on the console, as on a board: the firmware stops and unmounts its storage."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self._write_console(b"\x03")
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("firmware did not stop on Ctrl-C")
        return self._finish()

    def kill(self):
        """Power cut: SIGKILL, nothing written back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        return self._finish()

    def wait_exit(self, timeout=15):
        self.proc.wait(timeout)
        return self._finish()

    def _finish(self):
        code = self.proc.returncode
        self._reader.join(5)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None
        self.exit_codes.append(code)
        return code

    def restart(self):
        self.stop()
        return self.start()
