"""`make memory`: the firmware's heap budget, measured on the emulated board.

Prints a Markdown report (docs/memory.md quotes it; `--write` replaces its measured part):

- the heap after boot (the "ready, N bytes of heap free" line, then `info`'s heap_free and
  heap_max_block, the largest block the heap can give) at each heap size asked for, with the
  modules loaded from .mpy files and with their code in place (as a frozen build runs it), and
  the smallest heap the board boots and answers at (steps of 8 KB);
- the resident bytes of each module, imported in boot order (gc.mem_alloc before and after,
  with a collection), and the name table (qstr pools) they fill; the names of every module,
  interned at boot, and how many more fit before the table's next pool (tests/name_pool.py);
- the cost of one connected client (POP3 after its greeting, SMTP after EHLO), of one TLS
  session, of 1,000 messages in a logged-in mailbox (3,000 delivered), of a console request
  (what it allocates, and what stays after it);
- the lowest heap_free seen (sampled every 50 ms over the console) while a 5 MB message is
  delivered and then read with RETR;
- a soak of mixed sessions (deliveries, logins, RETR, DELE and QUIT, console requests; 10,000 by
  default) at the given heap, and one with TLS sessions among them at --tls-heap: MemoryErrors and
  temporary errors in the log, and heap_free / heap_max_block after it.

    python bench/memory.py [--heap 160k] [--tls-heap 176k] [--sessions 10000] [--micropython PATH] [--write]

A benchmark, not a test: every load is bounded in count and time, every board is stopped. With
`--micropython ../shared/tools/micropython-i386` (the 32-bit build: no ssl) TLS is left out.
"""

import argparse
import contextlib
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "host_tools")]

from pocketpost_host import firmware  # noqa: E402
from pocketpost_host import tls as certificates  # noqa: E402

import emulated_board  # noqa: E402
import name_pool  # noqa: E402
from wire import Wire, pop3_login, smtp_session  # noqa: E402

KB = 1024
# Modules that stay after boot, in the order boot.py imports them (each after what it imports;
# boot.py itself is unloaded once the app is made; the sessions' code is loaded with their first
# client: client_costs).
BOOT_MODULES = [
    "pocketpost", "pocketpost.log", "pocketpost.heap", "pocketpost.crypto", "pocketpost.users",
    "pocketpost.config", "pocketpost.console", "pocketpost.netio", "pocketpost.throttle",
    "pocketpost.server", "pocketpost.mailbox", "pocketpost.store",
    "pocketpost.app",
    "pocketpost.board", "pocketpost.board.unix",
]
MODULE_SCRIPT = """
import gc, micropython, sys
sys.path.insert(0, ".")
import asyncio, json, os, time, binascii, hashlib, socket, select, errno
for m in {modules!r}:
    gc.collect(); a = gc.mem_alloc()
    try:
        __import__(m)
    except ImportError as e:
        print("skip", m); continue
    gc.collect(); print("mod", m, gc.mem_alloc() - a)
micropython.qstr_info()
"""


def parse_heap(text):
    text = text.lower()
    return int(text[:-1]) * KB if text.endswith("k") else int(text)


class Board(emulated_board.EmulatedBoard):
    """The emulated board on a chosen MicroPython executable (`exe`, set by board())."""

    # The console client is not shared between threads: one request at a time (the soak's two
    # client threads and the sampler ask the board too).
    console_lock = threading.Lock()

    def request(self, command, **args):
        with self.console_lock:
            return super().request(command, **args)

    def heap_now(self):
        info = self.request("info")
        return info["heap_free"], info["heap_max_block"]


@contextlib.contextmanager
def board(app, heap, exe, **options):
    b = Board(app, tempfile.mkdtemp(prefix="pocketpost-memory-"), heap=heap, **options)
    b.exe = exe
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            b.stop()


def started(b, users=("alice",)):
    b.start(timeout=30)
    for name in users:
        b.add_user(name, "wonderland")
    return b


def deliver(port, count, body=b"Subject: bulk\r\n\r\nline\r\n", rcpt=b"alice@pocketpost.local"):
    w = smtp_session(port)
    try:
        _deliver(w, count, body, rcpt)
    finally:
        w.close()


def _deliver(w, count, body, rcpt):
    for _ in range(count):
        w.send(b"MAIL FROM:<bulk@example.org>\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n")
        for _ in range(3):
            w.smtp_reply()
        w.send(body + b".\r\n")
        reply = w.smtp_reply()[0]
        if not reply.startswith("250"):
            raise RuntimeError("delivery refused: " + reply)
    w.cmd("QUIT")


def boot_figures(app, exe, heaps, code_in_place=False):
    rows = []
    for heap in heaps:
        with board(app, heap, exe, code_in_place=code_in_place) as b:
            try:
                started(b)
                free, block = b.heap_now()
                rows.append((heap, b.ready_free(), free, block, ""))
            except Exception as e:  # the floor: reported, not raised
                rows.append((heap, None, None, None, str(e).splitlines()[-1][:80] if str(e) else type(e).__name__))
    return rows


def floor(app, exe, start_kb, tls_der=None):
    """The smallest heap (8 KB steps down from start_kb) at which the board boots, takes a
    user and answers info (with a certificate installed when tls_der is given)."""
    ok = None
    kb = start_kb
    while kb >= 64:
        options = {"pop3s_port": emulated_board.free_port(), "smtps_port": emulated_board.free_port()} if tls_der else {}
        with board(app, "{}k".format(kb), exe, **options) as b:
            try:
                started(b)
                if tls_der:
                    certificates.install(b.console, *tls_der)
                    b.restart()
                    if not b.request("info")["tls"]["certificate"]:
                        raise RuntimeError("no TLS")
                b.heap_now()
                ok = kb
            except Exception:
                break
        kb -= 8
    return ok


def module_figures(app, exe):
    out = subprocess.run(
        [exe, "-X", "heapsize=4M", "-c", MODULE_SCRIPT.format(modules=BOOT_MODULES)],
        cwd=app, capture_output=True, text=True, timeout=60,
    ).stdout
    rows = [(m, int(n)) for _, m, n in (line.split() for line in out.splitlines() if line.startswith("mod "))]
    qstr = next((line for line in out.splitlines() if line.startswith("qstr pool")), "")
    return rows, qstr


def client_costs(app, exe, heap):
    with board(app, heap, exe) as b:
        started(b)
        time.sleep(0.2)
        base = b.heap_now()[0]
        # Each protocol's first client loads its sessions' code (server.session_begins), the
        # second costs only itself. One protocol at a time: at 160k two clients of each at once
        # leave the console no room to answer info (it answers NOMEM).
        pop3 = _two_clients(b, lambda: _greeted(Wire(b.pop3_port)))
        smtp = _two_clients(b, lambda: smtp_session(b.smtp_port))
        # Both protocols' code at once, a client of each: the case the 144k heap fails
        # (docs/memory.md).
        clients = [_greeted(Wire(b.pop3_port)), smtp_session(b.smtp_port)]
        both, both_block = b.heap_now()
        for w in clients:
            w.close()
        back = b.settled_heap()  # the clients gone, and their code unloaded
        # Console requests: allocation per request (heap_allocated_total, less what the info
        # that reads it allocates), and what stays after them.
        total0 = b.request("info").get("heap_allocated_total")
        total1 = b.request("info").get("heap_allocated_total")
        for _ in range(10):
            b.request("user.list")
        total2 = b.request("info").get("heap_allocated_total")
        settled, _ = b.heap_now()
        per_request = None if total0 is None else (total2 - total1 - (total1 - total0)) // 10
        return {
            "POP3 sessions' code (pop3.py, maildrop.py, session.py, transparency.py), loaded with the first client": pop3[0],
            "POP3 client, after its greeting": pop3[1],
            "SMTP sessions' code (smtp.py, dates.py, session.py, transparency.py), loaded with the first client": smtp[0],
            "SMTP client, after EHLO": smtp[1],
            "heap free (info) with a POP3 and an SMTP client connected": both,
            "largest free block then": both_block,
            "left after the clients closed": base - back,
            "allocated by one console request (user.list, one user; average of 10)": per_request,
            "left after 12 console requests": back - settled,
        }


def _greeted(w):
    w.line()  # its greeting
    return w


def _two_clients(b, connect):
    """(the sessions' code, one client): the heap two clients of a protocol take, the first
    with the code, measured with info; the clients are closed and their code unloaded after."""
    free = [b.settled_heap()]
    clients = []
    for _ in range(2):
        clients.append(connect())
        free.append(b.heap_now()[0])
    for w in clients:
        w.close()
    client = free[1] - free[2]
    return (free[0] - free[1]) - client, client


def mailbox_cost(app, exe, heap, messages=3000):
    with board(app, heap, exe) as b:
        started(b)
        deliver(b.smtp_port, messages)
        # The SMTP code unloaded first: a shortage at the login would unload it (as idle), and
        # the login would seem to cost less than nothing (32-bit at 112k: -3,782 per 1,000).
        b.settled_heap()
        # A POP3 client that stays connected keeps the sessions' code loaded throughout.
        keep = Wire(b.pop3_port)
        keep.line()
        base, _ = b.heap_now()
        w = pop3_login(b.pop3_port)
        logged_in, block = b.heap_now()
        w.cmd("QUIT")
        w.close()
        # The cost of the session itself, measured with an empty mailbox of another user.
        b.add_user("bob", "wonderland")
        time.sleep(0.2)
        base2, _ = b.heap_now()
        w = pop3_login(b.pop3_port, "bob")
        empty, _ = b.heap_now()
        w.cmd("QUIT")
        keep.close()
        per_1000 = ((base - logged_in) - (base2 - empty)) * 1000 // messages
        return {
            "POP3 session logged in to an empty mailbox": base2 - empty,
            "per 1,000 messages in a logged-in mailbox ({} delivered)".format(messages): per_1000,
            "largest free block while a {}-message mailbox is open".format(messages): block,
        }


def tls_cost(app, exe, heap, der):
    options = {"pop3s_port": emulated_board.free_port(), "smtps_port": emulated_board.free_port()}
    with board(app, heap, exe, **options) as b:
        started(b)
        before_cert, _ = b.heap_now()
        certificates.install(b.console, *der)
        b.restart()
        time.sleep(0.2)
        booted, _ = b.heap_now()
        keep = Wire(b.pop3_port)  # keeps the POP3 sessions' code loaded
        keep.line()
        base, _ = b.heap_now()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        s = context.wrap_socket(socket.create_connection(("127.0.0.1", b.options["pop3s_port"]), timeout=20))
        s.recv(100)
        during, _ = b.heap_now()
        s.close()
        keep.close()
        return {
            "TLS installed (context, module, two listeners), at boot": before_cert - booted,
            "one TLS session (POP3S, after the greeting)": base - during,
        }


class Sampler(threading.Thread):
    """Reads info's heap_free every 50 ms until stopped; keeps the lowest."""

    def __init__(self, b):
        super().__init__(daemon=True)
        self.b = b
        self.lowest = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            free = self.b.request("info")["heap_free"]
            self.lowest = free if self.lowest is None else min(self.lowest, free)
            time.sleep(0.05)


def transfer_peak(app, exe, heap, size=5 * 1024 * 1024):
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (size // len(line))
    with board(app, heap, exe) as b:
        started(b)
        time.sleep(0.2)
        base, _ = b.heap_now()
        sampler = Sampler(b)
        sampler.start()
        deliver(b.smtp_port, 1, body)
        low_in = sampler.lowest
        sampler.lowest = None
        w = pop3_login(b.pop3_port)
        w.send("RETR 1\r\n")
        w.line()
        w.until_end()
        w.cmd("QUIT")
        sampler.stop.set()
        sampler.join()
        return {
            "idle heap_free before": base,
            "lowest heap_free sampled during a 5 MB delivery": low_in,
            "lowest heap_free sampled during its RETR": sampler.lowest,
        }


def soak(app, exe, heap, sessions, der, seconds=900):
    """`sessions` mixed sessions from two client threads, bounded by `seconds`."""
    options = {}
    if der:
        options = {"pop3s_port": emulated_board.free_port(), "smtps_port": emulated_board.free_port()}
    with board(app, heap, exe, **options) as b:
        started(b, ("alice", "bob"))
        if der:
            b.set_config(require_tls_for_auth="no")  # plain logins beside the TLS sessions
            certificates.install(b.console, *der)
            b.restart()
        counts = {"delivery": 0, "login+RETR+DELE+QUIT": 0, "login: mailbox in use": 0, "console": 0, "TLS": 0, "temporary errors": 0}
        lock = threading.Lock()
        errors = []
        deadline = time.monotonic() + seconds
        done = [0]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def one(rng):
            kind = rng.random()
            opened = []  # closed whatever happens: a client left open would hold a slot

            def wire(w):
                opened.append(w)
                return w

            try:
                if kind < 0.45:
                    body = b"Subject: soak\r\n\r\n" + b"y" * rng.choice((200, 2000, 20000)) + b"\r\n"
                    deliver(b.smtp_port, 1, body, rng.choice((b"alice@pocketpost.local", b"bob@pocketpost.local")))
                    what = "delivery"
                elif kind < 0.8:
                    w = wire(Wire(b.pop3_port))
                    w.line()
                    w.cmd("USER " + rng.choice(("alice", "bob")))
                    reply = w.cmd("PASS wonderland")
                    if reply.startswith("-ERR [IN-USE]"):  # the other thread has that mailbox
                        w.cmd("QUIT")
                        with lock:
                            counts["login: mailbox in use"] += 1
                        return
                    if not reply.startswith("+OK"):
                        raise RuntimeError("login refused: " + reply)
                    stat = w.cmd("STAT").split()
                    if len(stat) > 1 and int(stat[1]) > 0:
                        w.send("RETR 1\r\n")
                        if w.line().startswith("+OK"):
                            w.until_end()
                        if int(stat[1]) > 20:
                            for n in range(1, 11):
                                w.cmd("DELE {}".format(n))
                    w.cmd("QUIT")
                    w.close()
                    what = "login+RETR+DELE+QUIT"
                elif kind < 0.9 or not der:
                    b.request(rng.choice(("user.list", "mailbox.stats", "log.tail", "info", "config.get")))
                    what = "console"
                else:
                    s = wire(context.wrap_socket(socket.create_connection(("127.0.0.1", b.options["pop3s_port"]), timeout=20)))
                    s.recv(100)
                    s.sendall(b"QUIT\r\n")
                    s.recv(100)
                    s.close()
                    what = "TLS"
            except Exception as e:
                what = "temporary errors"
                errors.append(repr(e)[:200])
            finally:
                for w in opened:
                    with contextlib.suppress(Exception):
                        w.close()
            with lock:
                counts[what] += 1

        def client(seed):
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                with lock:
                    if done[0] >= sessions:
                        return
                    done[0] += 1
                one(rng)

        started_at = time.monotonic()
        threads = [threading.Thread(target=client, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started_at
        free = block = None
        with contextlib.suppress(Exception):
            b.settled_heap(30)  # the last clients' sessions ended, and their code unloaded
            free, block = b.heap_now()
        (Path(tempfile.gettempdir()) / "pocketpost-memory-soak.log").write_text("\n".join(b.lines) + "\n")
        memory_errors = sum("MemoryError" in line for line in b.lines)
        short = sum("not enough memory" in line for line in b.lines)
        return {
            "sessions": done[0],
            "seconds": round(elapsed, 1),
            **counts,
            "client errors (first)": errors[0] if errors else "",
            "MemoryError lines in the log": memory_errors,
            "'not enough memory' lines in the log": short,
            "heap_free after": free,
            "heap_max_block after": block,
        }


def table(rows, headers):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join("—" if v is None else "{:,}".format(v) if isinstance(v, int) else str(v) for v in row) + " |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap", default="160k", help="heap of the client, mailbox, transfer and soak figures")
    parser.add_argument("--boot-heaps", default="176k,160k,144k,128k", help="heaps whose boot figures are printed")
    parser.add_argument("--sessions", type=int, default=10000, help="sessions of the soak (0: no soak)")
    parser.add_argument("--tls-heap", default="176k", help="heap of the soak with TLS sessions (64-bit TLS needs more than --heap)")
    parser.add_argument("--micropython", default=None, help="MicroPython executable (default: the venv's)")
    parser.add_argument("--write", action="store_true", help="write the report into docs/memory.md")
    args = parser.parse_args(argv)

    exe = str(Path(firmware.find_micropython(args.micropython)).resolve())
    bits = subprocess.run([exe, "-c", "import sys; print(sys.maxsize > 2**32 and 64 or 32)"], capture_output=True, text=True).stdout.strip()
    has_tls = subprocess.run([exe, "-c", "import ssl"], capture_output=True).returncode == 0
    app = Path(tempfile.mkdtemp(prefix="pocketpost-app-"))
    firmware.compile_tree(firmware.source_dir(), app)
    der = certificates.to_der(*certificates.generate("127.0.0.1", days=30)) if has_tls else None
    report = ["## Measured: {}-bit MicroPython ({}), {}".format(bits, Path(exe).name, time.strftime("%Y-%m-%d"))]

    def section(title, body):
        report.append("\n### " + title + "\n\n" + body)
        print("\n".join(report[-1:]), flush=True)

    heaps = [h.strip() for h in args.boot_heaps.split(",") if h.strip()]
    headers = ["heap", "ready: free", "info: heap_free", "info: largest block", "failure"]
    section("After boot", table(boot_figures(app, exe, heaps), headers))
    section("After boot, the code in place (as a frozen build runs it: boards/unix/in_place.py)", table(boot_figures(app, exe, heaps, code_in_place=True), headers))
    top = max(parse_heap(h) for h in heaps) // KB
    floors = [("boots and answers", floor(app, exe, top))]
    if der:
        floors.append(("boots with a certificate installed and answers", floor(app, exe, top, der)))
    section("Smallest heap (8 KB steps)", table([(what, "{}k".format(kb) if kb else "none") for what, kb in floors], ["what", "smallest heap"]))
    rows, qstr = module_figures(app, exe)
    section("Resident bytes of each module (boot order)", table(rows + [("total", sum(n for _, n in rows))], ["module", "bytes"]) + "\n\n" + qstr)
    names, octets, headroom, next_pool = name_pool.measure(app, exe)
    section("Names (qstrs) after boot, every module's interned", table([
        ("names", names), ("octets of heap (pools and text)", octets),
        ("names that fit before the next pool", headroom if headroom is not None else "more than 1,000"),
        ("octets the next pool takes, in one block", next_pool if next_pool is not None else ""),
    ], ["what", "value"]))
    costs = client_costs(app, exe, args.heap)
    costs.update(mailbox_cost(app, exe, args.heap))
    if der:
        costs.update(tls_cost(app, exe, args.heap, der))
    section("Costs at {}".format(args.heap), table(costs.items(), ["what", "bytes"]))
    section("A 5 MB message at {}".format(args.heap), table(transfer_peak(app, exe, args.heap).items(), ["what", "bytes"]))
    if args.sessions:
        section("Soak at {}: {} mixed sessions, no certificate".format(args.heap, args.sessions), table(soak(app, exe, args.heap, args.sessions, None).items(), ["what", "value"]))
        if der:
            section("Soak at {}: {} mixed sessions, TLS sessions among them".format(args.tls_heap, args.sessions), table(soak(app, exe, args.tls_heap, args.sessions, der).items(), ["what", "value"]))
    text = "\n".join(report) + "\n"
    if args.write:
        path = ROOT / "docs" / "memory.md"
        page = path.read_text() if path.exists() else ""
        marker = "<!-- measured: {}-bit -->".format(bits)
        start, end = page.find(marker), page.find("<!-- end {}-bit -->".format(bits))
        block = "{}\n{}<!-- end {}-bit -->".format(marker, text, bits)
        page = page[:start] + block + page[end + len("<!-- end {}-bit -->".format(bits)):] if start >= 0 and end >= 0 else page + "\n" + block + "\n"
        path.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
