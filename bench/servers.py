"""The servers `make bench` starts, all on 127.0.0.1 and free ports, and what it reads about
their processes (RSS, CPU time, CPU pinning).

- pocketpost: the firmware on the emulated unix board (tests/emulated_board.py), heap
  firmware.DEFAULT_HEAP.
- aiosmtpd: bench/aiosmtpd_server.py in its own process.
- smtp-sink: Postfix's C sink (Postfix itself is never started).
- Dovecot: the tests' private Dovecot (tests/reference_servers.py), whose in-process aiosmtpd
  fills its Maildir.

Every class stops what it started; `Servers` stops them all, in reverse order, even on error."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from emulated_board import EmulatedBoard, free_port  # noqa: E402
from pocketpost_host import firmware  # noqa: E402
from reference_servers import ReferenceServers  # noqa: E402

from loads import find_tool  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- processes


def tree(pid):
    """pid and all its descendants that exist now."""
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
        i += 1
    return out


def status_kb(pid, field):
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """CPU time a process has used, all its threads, in seconds: the sum of the threads'
    /proc/PID/task/TID/schedstat (nanoseconds), else user+system from /proc/PID/stat (ticks)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid):
    """CPU time of a process tree: its live processes, plus what the root's children that ended
    used (cutime+cstime: Dovecot's master reaps its pop3 and login processes)."""
    total = 0.0
    for p in tree(pid):
        t = cpu_seconds(p)
        if t is not None:
            total += t
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    except OSError:
        return None
    return total


def pin(pids, cpus):
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


class MemorySampler:
    """Samples the RSS of each watched process tree every `interval` seconds: the peak of the
    tree's summed RSS (a multi-process server like Dovecot) and the largest VmHWM seen of any
    one of its processes. Processes that live shorter than the interval can be missed."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.roots = {}  # name: pid
        self.peak_sum_kb = {}
        self.peak_hwm_kb = {}
        self.max_processes = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name, pid):
        self.roots[name] = pid
        self.peak_sum_kb.setdefault(name, 0)
        self.peak_hwm_kb.setdefault(name, 0)
        self.max_processes.setdefault(name, 0)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self):
        for name, root in list(self.roots.items()):
            pids = tree(root)
            total = 0
            for pid in pids:
                rss = status_kb(pid, "VmRSS")
                hwm = status_kb(pid, "VmHWM")
                if rss:
                    total += rss
                if hwm and hwm > self.peak_hwm_kb[name]:
                    self.peak_hwm_kb[name] = hwm
            self.peak_sum_kb[name] = max(self.peak_sum_kb[name], total)
            self.max_processes[name] = max(self.max_processes[name], len(pids))

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()


# ---- servers


class Pocketpost:
    """The firmware on the emulated unix board."""

    name = "pocketpost"

    def __init__(self, app_dir, data_dir, heap, domain, sd_size):
        self.board = EmulatedBoard(app_dir, data_dir, heap=heap, domain=domain, sd_size=sd_size)
        self.domain = domain
        # The tests' harness may pass options (ports of newer services, say) that the firmware being
        # benchmarked does not know (an older revision): keep those its unix board accepts.
        accepted = (firmware.source_dir() / "pocketpost" / "board" / "unix.py").read_text()
        self.board.options = {k: v for k, v in self.board.options.items() if "--" + k.replace("_", "-") in accepted}

    def start(self):
        self.board.start(timeout=120)  # a fresh SD image is formatted through Python first
        return self

    @property
    def pid(self):
        return self.board.proc.pid

    @property
    def smtp_port(self):
        return self.board.smtp_port

    @property
    def pop3_port(self):
        return self.board.pop3_port

    def request(self, command, **args):
        return self.board.request(command, **args)

    def info(self):
        return self.board.request("info")

    def messages(self, user):
        return self.request("mailbox.stats", name=user)["mailboxes"][0]["messages"]

    def last_error(self):
        """The firmware's last logged error with the traceback's last lines, for a failure report."""
        lines = self.board.lines
        for i in range(len(lines) - 1, -1, -1):
            if " ERROR " in lines[i]:
                tail = [l.strip() for l in lines[i + 1 : i + 8] if l.startswith(("  File", "MemoryError", "OSError", "Traceback")) or "Error" in l]
                return " | ".join([lines[i].strip()] + tail[:6])
        return "no error in the firmware's log"

    def stop(self):
        if self.board.proc is not None:
            try:
                self.board.stop()
            except AssertionError:
                pass  # it did not stop on Ctrl-C and was killed


class _Process:
    """A server in a subprocess, terminated (then killed) on stop."""

    name = ""

    def __init__(self):
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    def _wait_port(self, port, timeout=30):
        import socket

        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read().decode("utf-8", "replace") if self.proc.poll() is not None else ""
                raise RuntimeError(f"{self.name} did not start: {out[-2000:]}")
            time.sleep(0.1)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None


class Aiosmtpd(_Process):
    name = "aiosmtpd"

    def __init__(self, workdir, user, domain):
        super().__init__()
        self.maildir = Path(workdir) / "aiosmtpd" / "Maildir"
        self.user = user
        self.domain = domain
        self.smtp_port = free_port()

    def start(self):
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("aiosmtpd_server.py")), str(self.smtp_port), str(self.maildir), self.user, self.domain],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_port(self.smtp_port)
        return self

    def messages(self):
        return sum(1 for _ in os.scandir(self.maildir / "new"))

    def clear(self):
        for entry in os.scandir(self.maildir / "new"):
            os.unlink(entry.path)


class SmtpSink(_Process):
    """Postfix's smtp-sink: accepts and discards everything (no disk)."""

    name = "smtp-sink"
    BACKLOG = 256

    def __init__(self):
        super().__init__()
        self.smtp_port = free_port()

    def start(self):
        cmd = [find_tool("smtp-sink")]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root
        cmd += [f"127.0.0.1:{self.smtp_port}", str(self.BACKLOG)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_port(self.smtp_port)
        return self


class Dovecot:
    """The tests' private Dovecot POP3 server; its aiosmtpd (a thread of this process) delivers
    into the Maildir Dovecot serves, the way the tests fill it."""

    name = "dovecot"

    def __init__(self, user, password, domain):
        # Dovecot's own default: no POP3 session lock file (pocketpost's lock is in RAM).
        self.servers = ReferenceServers(user=user, password=password, domain=domain, lock_session=False)

    def start(self):
        self.servers.start()
        return self

    @property
    def pid(self):
        return self.servers.dovecot.pid

    @property
    def pop3_port(self):
        return self.servers.pop3_port

    @property
    def smtp_port(self):
        return self.servers.smtp_port

    def messages(self):
        return sum(1 for _ in os.scandir(self.servers.maildir / "new")) + sum(
            1 for _ in os.scandir(self.servers.maildir / "cur")
        )

    def stop(self):
        self.servers.stop()


def micropython_floor_rss_kb(micropython, heap):
    """RSS of the unix port's process doing nothing (its CPython host, the VM and its heap):
    the part of pocketpost's RSS that is not the firmware's."""
    proc = subprocess.Popen(
        [micropython, "-X", f"heapsize={heap}", "-c", "import time\ntime.sleep(1)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.6)
        return status_kb(proc.pid, "VmHWM")
    finally:
        proc.kill()
        proc.wait()


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
