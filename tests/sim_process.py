"""`pocketpost sim` as the tests run it: a real subprocess on free loopback ports with its own
data folder, its output lines collected as they come."""

import poplib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from pocketpost_host.cli import cli

from emulated_board import free_port

# The console script pip installed beside this Python, as users run it.
POCKETPOST = str(Path(sys.executable).parent / "pocketpost")
MPREMOTE = str(Path(sys.executable).parent / "mpremote")
READY_LINE = "Ctrl-C stops the board"


class SimProcess:
    def __init__(self, data, *options):
        self.data = Path(data)
        self.options = list(options)
        self.pop3_port = free_port()
        self.smtp_port = free_port()
        self.lines = []
        self.proc = None
        self._changed = threading.Condition()

    @property
    def link(self):
        return str(self.data / "console")

    def start(self, timeout=30):
        """Starts the simulator and waits until it announced its endpoints."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pocketpost_host", "sim", "--data", str(self.data),
             "--pop3-port", str(self.pop3_port), "--smtp-port", str(self.smtp_port), *self.options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(READY_LINE, timeout)
        return self

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text, timeout=20, start=0):
        """The index of the first line from `start` on that contains `text`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"sim never printed {text!r}; its output:\n" + "\n".join(self.lines[-40:]))
                self._changed.wait(min(left, 0.5))

    def stop(self, signum=signal.SIGINT, timeout=30):
        """Stops the simulator as a user would (Ctrl-C, or SIGTERM); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("sim did not stop:\n" + "\n".join(self.lines[-40:]))
        finally:
            self._reader.join(5)
            self.proc.stdout.close()
        return code

    def firmware_pid(self):
        """The MicroPython process the simulator runs now."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def cli(self, *args, input=None, env=None):
        """Runs a pocketpost command against this board's console link, in this process."""
        return run_cli("--port", self.link, *args, input=input, env=env)

    def pop3_login(self, user, password):
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=20)
        try:
            client.user(user)
            client.pass_(password)
        except BaseException:
            client.close()
            raise
        return client


def run_cli(*args, input=None, env=None):
    """Runs the pocketpost command line in this process; returns click's Result (exit_code,
    stdout, stderr)."""
    return CliRunner().invoke(cli, list(args), input=input, env=env, prog_name="pocketpost")


def run_pocketpost(*args, input=None, timeout=30):
    """Runs the installed `pocketpost` console script."""
    return subprocess.run([POCKETPOST, *args], input=input, capture_output=True, text=True, timeout=timeout)


def stop_quietly(sim):
    if sim.proc is not None and sim.proc.poll() is None:
        sim.stop()
    elif sim.proc is not None and not sim.proc.stdout.closed:
        sim.proc.wait()
        sim._reader.join(5)
        sim.proc.stdout.close()
