"""`pocketpost sim`: the firmware on the emulated board (MicroPython's unix port), with its
console exposed as a pseudo-terminal that tools open like a board's USB serial port.

Two pseudo-terminals: pty A between the simulator and the MicroPython process (raw mode, a new
one per process), pty B whose slave is the user's console link DATA/console (one per simulator
run, so the link stays valid whatever the board does). The simulator relays bytes both ways and
prints the board's lines (logs) on its own terminal.

The board behaves as a MicroPython board does at its console:

- Ctrl-C stops the firmware (it unmounts its storage and exits 0) and the REPL takes the
  console: a MicroPython interpreter without the firmware. What was typed after the Ctrl-C
  goes to the REPL, so `mpremote connect DATA/console resume ...` works.
- Ctrl-D at the REPL is a soft reset (the interpreter exits 0): "MPY: soft reboot", then the
  firmware starts again. From the raw REPL, as on a board, the soft reset leaves the board in
  the raw REPL without the firmware, which is what a plain `mpremote exec` expects.
- `machine.reset()` at the REPL (so `mpremote reset`), the console's `reboot` (exit 75) and a
  crash (exit 70) start the firmware again.

The firmware runs without the unix port's `-i`: with it, the REPL would also follow a reboot or
a crash and hide their exit codes.
"""

import ctypes
import errno
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from . import firmware
from .console import REPLY_PREFIX, ConsoleClient
from .errors import PocketpostError
from .passwords import hash_password

DEFAULT_DATA = "sim-data"
DEFAULT_BIND = firmware.board_definition("unix")["network"]["default_bind"]
DEFAULT_POP3_PORT = 1110
DEFAULT_SMTP_PORT = 2525
DEFAULT_DOMAIN = "pocketpost.local"
DEFAULT_SD_SIZE = firmware.board_definition("unix")["sd"]["default_size"]

# Seconds the first boot may take before the simulator gives up.
BOOT_TIMEOUT = 30.0
# Seconds before starting the firmware again when it stopped before it was ready (a boot loop).
RESTART_DELAY = 1.0
# Seconds to wait at each step of stopping the board before the next, harder one.
STOP_STEP_TIMEOUT = 10.0
# Longest poll wait: how late the simulator notices a console client coming or going.
POLL_INTERVAL = 0.25
# Input held for the board before the simulator stops reading the console link (the client's
# writes then wait, as with a UART's flow control).
MAX_PENDING_INPUT = 4096

CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
READY_MARK = " INFO boot: ready"
# What MicroPython prints entering the raw REPL, and starting the friendly REPL.
RAW_REPL_MARK = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_REPL_MARK = b'Type "help()" for more information.'
SOFT_REBOOT = b"MPY: soft reboot\r\n"

# The unix port's `machine` lacks reset(); a board's resets the chip, which here means: end the
# process with the exit code that makes the simulator start the firmware. A module of the same
# name on MICROPYPATH extends the built-in one (MicroPython's extensible modules).
MACHINE_MODULE = f"""\
# Written by pocketpost sim: the unix port's machine module plus reset(), a hard reset.
import sys

_path = sys.path
sys.path = []  # so that the import below finds the built-in machine, not this file
try:
    from machine import *
finally:
    sys.path = _path


def reset():
    sys.exit({firmware.EXIT_REBOOT})
"""


class SimError(PocketpostError):
    """The simulator cannot run."""


def exit_reason(code: int) -> str:
    """Names an exit code of the firmware as a board user would."""
    if code == firmware.EXIT_REBOOT:
        return "reboot"
    if code == firmware.EXIT_CRASH:
        return "crash"
    if code == firmware.EXIT_STOPPED:
        return "Ctrl-C"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


class _BoardPort:
    """The pyserial-like port of the simulator's own console requests: reads go through the
    relay, so what the board prints meanwhile still reaches the console link and terminal."""

    in_waiting = 0

    def __init__(self, sim):
        self.sim = sim
        self.timeout = 1.0

    def read(self, n=1):
        sim = self.sim
        if not sim.captured:
            sim.pump(self.timeout, lambda: bool(sim.captured))
        if not sim.captured and (sim.board_fd is None or sim.stop_requested):
            raise SimError("the board stopped while the simulator was talking to it")
        data = bytes(sim.captured)
        sim.captured.clear()
        return data

    def write(self, data):
        self.sim.send_to_board(data)
        return len(data)


class Simulator:
    """Runs the firmware on the unix board until stopped (Ctrl-C, SIGTERM or SIGHUP, or
    `stop()`), starting it again whenever it ends on its own."""

    def __init__(
        self,
        data=DEFAULT_DATA,
        micropython=None,
        bind=DEFAULT_BIND,
        pop3_port=DEFAULT_POP3_PORT,
        smtp_port=DEFAULT_SMTP_PORT,
        domain=DEFAULT_DOMAIN,
        sd_size=DEFAULT_SD_SIZE,
        heap=firmware.DEFAULT_HEAP,
        demo_user=None,
        out=None,
        pop3s_port=None,
        smtps_port=None,
        submission_port=None,
        watchdog=firmware.DEFAULT_WATCHDOG_S,
        code_in_place=False,
    ):
        self.data = Path(data).resolve()
        self.micropython = micropython
        self.bind = bind
        self.pop3_port = pop3_port
        self.smtp_port = smtp_port
        self.domain = domain
        self.sd_size = sd_size
        self.heap = heap
        # The modules run from a read-only image, as a frozen build's from flash (in_place.py).
        self.code_in_place = code_in_place
        self.demo_user = demo_user  # (name, password) or None
        # The TLS and submission ports: off (0) unless given.
        self.pop3s_port = pop3s_port or 0
        self.smtps_port = smtps_port or 0
        self.submission_port = submission_port or 0
        self.out = out or sys.stdout
        self.watchdog = watchdog  # seconds without a feed before a reset; 0 is off
        self.alive = self.data / "alive"  # what the firmware's watchdog feeder rewrites
        self.link = self.data / "console"
        self.app_dir = self.data / "app"
        self.rom_dir = self.data / "rom"

        self.stop_requested = False
        self.exe = None
        self.proc = None
        self.exit_code = None  # of the last process, once it ended
        self.board_fd = None  # pty A's master, None between processes
        self.link_fd = None  # pty B's master
        self.running_firmware = False  # else the REPL's bare interpreter
        self.ready = False  # the firmware printed "boot: ready"
        self.ready_at = 0.0  # when it did (time.time())
        self.watchdog_checked = 0.0
        self.watchdog_fired = False  # the watchdog reset the process that runs or just ended
        self.interrupted = False  # a Ctrl-C went to the firmware, which is stopping
        self.raw_repl = False  # the REPL is the raw REPL
        self.recent_output = b""  # the end of the board's output, to spot prompts and marks
        self.partial_line = b""
        self.last_lines = []  # the terminal's last lines, to explain a failed boot
        self.pending_input = bytearray()  # for the board, not written to pty A yet
        self.hold_input = False  # the simulator itself is talking to the board
        self.captured = None  # a bytearray of the board's output while the simulator reads it
        self.link_ended_in_cr = False
        self._lock_fd = None
        self._wakeup = None  # a pipe that signal handlers write to, to end a poll early
        self._saved_signals = {}
        self._saved_wakeup_fd = -1

    # ---- the run

    def run(self):
        """Runs until stopped; raises SimError when the firmware cannot start."""
        self.exe = firmware.find_micropython(self.micropython)
        firmware.check_micropython(self.exe)
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            self._lock_data()
        except OSError as e:
            raise SimError(f"cannot use {self.data} for the board's data: {e.strerror}") from None
        try:
            self._prepare()
            self._catch_signals()
            self._start_firmware()
            self.pump(BOOT_TIMEOUT, lambda: self.ready)
            if not self.stop_requested:
                if not self.ready:
                    raise SimError(self._boot_failure())
                self._provision_demo_user()
            if not self.stop_requested:
                self._announce()
            while not self.stop_requested:
                self.pump(None, lambda: False)
                if not self.stop_requested:
                    self._after_exit()
        finally:
            self.stop_requested = True
            try:
                self._stop_board()  # cleanly, also when something above failed
            finally:
                self._close()
        self._say(f"sim: the board stopped; its data stays in {self.data}")

    def _prepare(self):
        """The compiled firmware, the `machine` module for the REPL and the console link."""
        try:
            firmware.compile_tree(firmware.source_dir(), self.app_dir)
            self.rom_dir.mkdir(exist_ok=True)
            (self.rom_dir / "machine.py").write_text(MACHINE_MODULE)
            self._open_console_link()
        except OSError as e:
            where = e.filename2 or e.filename or self.data  # a rename names its target second
            raise SimError(f"cannot prepare {where}: {e.strerror}") from None

    def stop(self):
        """Asks the simulator to stop the board cleanly and return from run()."""
        self.stop_requested = True
        if self._wakeup is not None:
            os.write(self._wakeup[1], b"\0")

    def _lock_data(self):
        """Two simulators on one data folder would corrupt its images."""
        self._lock_fd = os.open(self.data / "sim.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SimError(f"another pocketpost sim is running on {self.data}") from None

    def _open_console_link(self):
        master, slave = pty.openpty()
        # Raw: no echo (it would send the board's output back to it), no line editing, no
        # signals; a terminal program or pyserial sets its own mode when it opens the link.
        tty.setraw(slave)
        target = os.ttyname(slave)
        # Nobody holds the slave open here: the master then reports a hang-up while no client
        # is connected, and the simulator drops the board's output like a UART nobody listens to.
        os.close(slave)
        os.set_blocking(master, False)
        self.link_fd = master
        temporary = self.link.with_name(self.link.name + ".new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(self.link)

    def _catch_signals(self):
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup = (read_end, write_end)
        if threading.current_thread() is threading.main_thread():
            self._saved_wakeup_fd = signal.set_wakeup_fd(write_end)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._saved_signals[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stop_requested = True

    def _close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for signum, handler in self._saved_signals.items():
            signal.signal(signum, handler)
        if self._saved_signals:
            signal.set_wakeup_fd(self._saved_wakeup_fd)
        for fd in (self.board_fd, self.link_fd, self._lock_fd, *(self._wakeup or ())):
            if fd is not None:
                os.close(fd)
        self.board_fd = self.link_fd = self._lock_fd = self._wakeup = None
        if self.link.is_symlink():
            self.link.unlink()

    # ---- the MicroPython processes

    def _start_firmware(self):
        self._spawn(firmware.board_command(
            self.exe, self.app_dir, self.data, self.heap, bind=self.bind, pop3_port=self.pop3_port,
            smtp_port=self.smtp_port, pop3s_port=self.pop3s_port, smtps_port=self.smtps_port,
            submission_port=self.submission_port, domain=self.domain, sd_size=self.sd_size,
            code_in_place=self.code_in_place,
        ))
        self.running_firmware = True

    def _start_repl(self, raw=False):
        """The REPL of a board whose firmware is not running: the bare interpreter."""
        self._spawn([self.exe, "-X", f"heapsize={self.heap}"])
        self.running_firmware = False
        if raw:
            self.pending_input[:0] = CTRL_A
            self._write_board()

    def _spawn(self, command):
        master, slave = pty.openpty()
        tty.setraw(slave)  # bytes pass untouched: Ctrl-C is for the firmware, not a signal
        env = dict(os.environ, MICROPYPATH=f".frozen:{self.rom_dir}")
        try:
            # A new session: Ctrl-C on the simulator's terminal is for the simulator only.
            self.proc = subprocess.Popen(
                command, stdin=slave, stdout=slave, stderr=slave, cwd=self.app_dir, env=env,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.board_fd = master
        self.exit_code = None
        self.ready = self.interrupted = self.raw_repl = self.link_ended_in_cr = False
        self.watchdog_fired = False
        self.recent_output = self.partial_line = b""

    def _process_ended(self):
        os.close(self.board_fd)
        self.board_fd = None
        try:
            self.exit_code = self.proc.wait(STOP_STEP_TIMEOUT)
        except subprocess.TimeoutExpired:  # closed its terminal but did not end: a hung board
            self.proc.kill()
            self.exit_code = self.proc.wait()
        if self.partial_line:
            self._show_line(self.partial_line)
            self.partial_line = b""

    def _after_exit(self):
        """Does what a board does after the process that just ended."""
        code = self.exit_code
        if self.running_firmware and code == firmware.EXIT_STOPPED:
            self._say("sim: the firmware stopped (Ctrl-C); the REPL has the console, Ctrl-D restarts it")
            self._start_repl()
        elif self.running_firmware:
            reason = "watchdog reset" if self.watchdog_fired else exit_reason(code)
            self._say(f"sim: the firmware stopped ({reason}); starting it again")
            if not self.ready:
                self._sleep(RESTART_DELAY)  # a boot loop must not spin
            if not self.stop_requested:
                self._start_firmware()
        elif code == firmware.EXIT_STOPPED:
            self._to_link(SOFT_REBOOT)
            if self.raw_repl:
                self._say("sim: soft reset in the raw REPL; the board stays there without the firmware")
                self._start_repl(raw=True)
            else:
                self._say("sim: soft reset; starting the firmware")
                self._start_firmware()
        elif code == firmware.EXIT_REBOOT:
            self._say("sim: machine.reset(); starting the firmware")
            self._start_firmware()
        else:
            self._say(f"sim: the REPL ended ({exit_reason(code)}); starting the firmware")
            self._start_firmware()

    def _stop_board(self):
        """Stops the board as a person at its console would: Ctrl-C makes the firmware unmount
        its storage and exit; at the REPL, Ctrl-C (and Ctrl-B to leave a raw REPL) then Ctrl-D.
        A board that does not react is killed."""
        if self.board_fd is None:
            return
        self.hold_input = True
        self.pending_input.clear()
        if self.running_firmware:
            if not self.interrupted:
                self.send_to_board(CTRL_C)
            self.pump(STOP_STEP_TIMEOUT, lambda: False, stopping=True)
        else:
            self.recent_output = b""
            self.send_to_board(CTRL_C + CTRL_B if self.raw_repl else CTRL_C)
            self.pump(STOP_STEP_TIMEOUT, lambda: self.recent_output.endswith(b">>> "), stopping=True)
            if self.board_fd is not None:
                self.send_to_board(CTRL_D)
                self.pump(STOP_STEP_TIMEOUT, lambda: False, stopping=True)
        if self.board_fd is not None:
            self._say("sim: the board did not stop; killing it")
            self.proc.kill()
            self.pump(STOP_STEP_TIMEOUT, lambda: False, stopping=True)

    # ---- relaying

    def pump(self, timeout, until, stopping=False):
        """Relays between the board and the console link until `until()` is true, the process
        ended, a stop was requested (unless this relaying is part of the stopping: `stopping`)
        or `timeout` seconds passed (None: no limit). A stop requested before the call ends it
        too: a Ctrl-C's handler runs when Python next calls a function, which may be this one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.board_fd is not None and not until() and (stopping or not self.stop_requested):
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            self._poll_once(wait)
            self._check_watchdog()

    def _check_watchdog(self):
        """Resets a serving firmware that has not fed its watchdog (rewritten DATA/alive) for
        `watchdog` seconds, as an ESP32's watchdog timer resets a hung board."""
        if not self.watchdog or not self.ready or not self.running_firmware or self.interrupted:
            return
        if self.board_fd is None or self.watchdog_fired or self.stop_requested:
            return
        now = time.time()
        if now - self.watchdog_checked < POLL_INTERVAL:
            return
        self.watchdog_checked = now
        try:
            fed = max(self.alive.stat().st_mtime, self.ready_at)
        except OSError:
            fed = self.ready_at
        if now - fed > self.watchdog:
            self.watchdog_fired = True
            self._say(f"sim: watchdog: not fed for {self.watchdog:g} s; resetting the board")
            self.proc.kill()

    def _poll_once(self, wait):
        poller = select.poll()
        writable = select.POLLOUT if self.pending_input and not self.interrupted else 0
        poller.register(self.board_fd, select.POLLIN | writable)
        poller.register(self._wakeup[0], select.POLLIN)
        if self._client_connected() and not self.hold_input and len(self.pending_input) < MAX_PENDING_INPUT:
            poller.register(self.link_fd, select.POLLIN)
        for fd, events in poller.poll(wait * 1000):
            if fd == self._wakeup[0]:
                self._drain(fd)
            elif fd == self.link_fd:
                data = self._read(fd)
                if data:
                    self.send_to_board(data)
            elif fd == self.board_fd:
                if events & select.POLLOUT:
                    self._write_board()
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = self._read(fd)
                    if data:
                        self._from_board(data)
                    elif data is None:
                        self._process_ended()
                        return

    @staticmethod
    def _read(fd):
        """Bytes from `fd`; b"" when there are none now; None once its other side is closed."""
        try:
            return os.read(fd, 4096) or None
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # a pty master whose slave was closed by everyone
                return None
            raise

    @staticmethod
    def _drain(fd):
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def _sleep(self, seconds):
        """Waits `seconds`, or less when a stop is requested."""
        select.select([self._wakeup[0]], [], [], seconds)

    def send_to_board(self, data):
        """Bytes for the board, as if typed at its console."""
        self.pending_input += data
        self._write_board()

    def _write_board(self):
        """Writes pending input to the process. Input after a Ctrl-C to the firmware is held:
        the firmware exits, and that input is for the REPL that follows."""
        if self.interrupted or self.board_fd is None:
            return
        data = self.pending_input
        if self.running_firmware and CTRL_C in data:
            data = data[: data.index(CTRL_C) + 1]
        try:
            written = os.write(self.board_fd, data)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            return  # the process is ending; the poll sees its hang-up
        if self.running_firmware and CTRL_C in data[:written]:
            self.interrupted = True
        del self.pending_input[:written]

    def _client_connected(self):
        """Whether a program has the console link open (no hang-up on pty B's master)."""
        poller = select.poll()
        poller.register(self.link_fd, 0)
        return not poller.poll(0)

    def _to_link(self, data):
        """Relays bytes to the console link's client, if any; without a reader they are dropped,
        like a UART's output with nobody listening, and so is what a stalled reader cannot take."""
        if not self._client_connected():
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.link_fd, view):]
            except OSError:
                return

    def _cook(self, data):
        """Line ends as a board sends them: MicroPython's board ports turn LF into CR LF on the
        console, the unix port does not (terminals would show a staircase)."""
        cooked = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.link_ended_in_cr and data.startswith(b"\n"):
            cooked = cooked[1:]  # its CR went out with the previous chunk
        self.link_ended_in_cr = data.endswith(b"\r")
        return cooked

    def _from_board(self, data):
        self._to_link(self._cook(data))
        if self.captured is not None:
            self.captured += data
        window = self.recent_output + data
        raw_at, friendly_at = window.rfind(RAW_REPL_MARK), window.rfind(FRIENDLY_REPL_MARK)
        if raw_at != friendly_at:  # both -1 when neither is there
            self.raw_repl = raw_at > friendly_at
        self.recent_output = window[-64:]
        lines = (self.partial_line + data).split(b"\n")
        self.partial_line = lines.pop()
        if len(self.partial_line) > 4096:  # a REPL session without line ends: show it anyway
            lines.append(self.partial_line)
            self.partial_line = b""
        for line in lines:
            self._show_line(line)

    def _show_line(self, raw):
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        # The REPL's control bytes (mpremote's raw REPL) must not reach the user's terminal.
        text = "".join(c if c >= " " or c == "\t" else f"^{chr(ord(c) + 64)}" for c in text)
        if text.startswith(REPLY_PREFIX):
            return
        if self.running_firmware and READY_MARK in text:
            self.ready = True
            self.ready_at = time.time()
        self.last_lines = (self.last_lines + [text])[-10:]
        self._say(text)

    def _say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    # ---- talking to the board

    def _provision_demo_user(self):
        """Creates the demo user over the console if it does not exist yet."""
        if self.demo_user is None:
            return
        name, password = self.demo_user
        self.hold_input = True
        self.captured = bytearray()
        try:
            client = ConsoleClient(_BoardPort(self), timeout=BOOT_TIMEOUT)
            users = client.request("user.list")["users"]
            if not any(user["name"] == name for user in users):
                client.request("user.add", {"name": name, "hash": hash_password(password)})
        except SimError:
            if not self.stop_requested:
                raise
        finally:
            self.hold_input = False
            self.captured = None

    def _boot_failure(self):
        if self.board_fd is None:
            state = f"stopped before it was ready ({exit_reason(self.exit_code)})"
        else:
            state = f"was not ready after {BOOT_TIMEOUT:g} s"
        errors = [line for line in self.last_lines if " ERROR " in line] or self.last_lines[-1:]
        return f"the firmware {state}" + (f": {errors[-1]}" if errors else "")

    def _announce(self):
        """One line per endpoint, and what a mail client needs."""
        everywhere = self.bind == "0.0.0.0"
        note = " (all addresses)" if everywhere else ""
        self._say(f"POP3     {self.bind}:{self.pop3_port}{note}")
        self._say(f"SMTP     {self.bind}:{self.smtp_port}{note}")
        for label, port in (("POP3S", self.pop3s_port), ("SMTPS", self.smtps_port), ("SUBMIT", self.submission_port)):
            if port:
                tls = " (needs a certificate: pocketpost tls install)" if label != "SUBMIT" else ""
                self._say(f"{label:<8} {self.bind}:{port}{note}{tls}")
        self._say(f"console  {self.link}")
        if self.demo_user is not None:
            name, password = self.demo_user
            domain = self.domain.split(",")[0]
            host = "127.0.0.1" if everywhere else self.bind
            self._say(
                f"mail client: server {host}, POP3 port {self.pop3_port}, SMTP port {self.smtp_port}, "
                f"no TLS, user {name}, password {password}, address {name}@{domain}"
            )
        else:
            self._say(f"add a user: pocketpost --port {self.link} user add NAME")
        self._say("Ctrl-C stops the board")


def _die_with_parent():
    """Runs in the MicroPython process before it starts (Linux): if the simulator dies without
    stopping it (SIGKILL), the process goes too instead of serving on without a console."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
