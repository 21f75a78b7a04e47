"""The results of bench/run.py as a text table, docs/benchmarks.md and one chart."""

KB = 1024
MB = 1 << 20

# Published ESP32 figures (shared notes, reference-figures.md; the summary of them).
ESP32_SLOWDOWN = (70, 115)  # the unix port here is 70-115x faster than an ESP32 (pystone)
WIFI_MBS = (0.6, 1.2)  # MB/s per MicroPython TCP connection
SD_SPI_MBS = (0.2, 1.5)  # MB/s, SD over SPI
SMALL_REPLY_S = 0.115  # a small reply from MicroPython over Wi-Fi (10 KB HTTP reply: 115 ms)
# FAT file operations over SPI (arduino-esp32 #2816): create, open, close, remove; a rename is
# taken to cost a remove (both rewrite folder entries).
FAT_CREATE, FAT_OPEN, FAT_CLOSE, FAT_RENAME = 0.140, 0.104, 0.075, 0.145
# What the firmware does on the card per message (firmware/pocketpost/store.py, mailbox.py,
# maildrop.py, pop3.py): a delivery creates the temp file and closes it, opens and closes the
# index twice (next sequence number, append) and renames the file into the mailbox (plus three
# look-ups: index, message name, shard folder); a RETR opens and closes the index (the message's
# record) and the message file.
DELIVERY_S = FAT_CREATE + FAT_CLOSE + 2 * (FAT_OPEN + FAT_CLOSE) + FAT_RENAME
RETR_S = 2 * (FAT_OPEN + FAT_CLOSE)
# A mail check opens and reads the index twice (login's totals, UIDL's listing): 20 octets a message.
INDEX_RECORD = 20


def fmt(value, digits=None):
    if value is None:
        return "–"
    if digits is None:
        digits = 0 if abs(value) >= 100 else (1 if abs(value) >= 10 else 2)
    return f"{value:,.{digits}f}"


def _server(results, section, key, name):
    entry = results.get(section, {}).get(key)
    if not entry:
        return None
    s = entry["servers"].get(name)
    if not s or "error" in s:
        return None
    return s


def _median(results, section, key, name):
    s = _server(results, section, key, name)
    return s["median"] if s else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def marginal_alloc(results, direction):
    """Bytes allocated per MB that grows with message size: (per 1 MB message − per 2 KB
    message) / (their size difference), from the timed runs."""
    if direction == "in":
        small = _server(results, "smtp", "2k_1", "pocketpost")
        big = _server(results, "smtp", "1m_1", "pocketpost")
        if not small or not big:
            return None
        o_small, o_big = small["stored_octets_per_message"], big["stored_octets_per_message"]
    else:
        small = _server(results, "pop3", "2k", "pocketpost")
        big = _server(results, "pop3", "1m", "pocketpost")
        if not small or not big:
            return None
        o_small, o_big = small["octets_per_message"], big["octets_per_message"]
    if small.get("alloc_per_message") is None or big.get("alloc_per_message") is None:
        return None
    return (big["alloc_per_message"] - small["alloc_per_message"]) / ((o_big - o_small) / MB)


def whole_alloc(results, direction):
    s = _server(results, "smtp", "1m_1", "pocketpost") if direction == "in" else _server(results, "pop3", "1m", "pocketpost")
    return s.get("alloc_per_mb") if s else None


def fat_alloc(results, direction):
    """What the emulated SD card allocates for a message: (octets per file, octets per MB
    streamed, octets per MB of its Python block device), from bench/fat_alloc.py."""
    fat = results.get("alloc", {}).get("fat")
    if not fat:
        return None, None, None
    if direction == "in":
        small, big, calls = fat.get("small_write_alloc"), fat["write_alloc"], fat["write_calls"]
    else:
        small, big, calls = fat.get("small_read_alloc"), fat["read_alloc"], fat["read_calls"]
    device = calls[0] * fat["readblocks_alloc_per_call"] + calls[1] * fat["writeblocks_alloc_per_call"]
    device_per_mb = device * MB / fat["octets"]
    if small is None:
        return None, big * MB / fat["octets"], device_per_mb
    per_mb = (big - small) * MB / (fat["octets"] - fat["small_octets"])
    return small, per_mb, device_per_mb


def targets(results):
    """[(what, measured, target, met, shown value, shown target, note)]: ratios are
    "higher is better" (the latency ratio is Dovecot's time over pocketpost's)."""
    out = []

    def ratio_row(what, value, target, note="", failed=False):
        # A load pocketpost failed (any run) does not meet its target, whatever the other runs did.
        met = False if failed else (None if value is None else value >= target)
        if failed and value is not None:
            note = (note + "; " if note else "") + "some pocketpost runs failed"
        shown = (fmt(value, 2) + "×") if value is not None else ("pocketpost failed" if failed else "–")
        out.append((what, value, target, met, shown, f"≥ {target:g}×", note))

    def pp_failed(section, key):
        s = results.get(section, {}).get(key, {}).get("servers", {}).get("pocketpost")
        return bool(s) and ("error" in s or bool(s.get("failed_runs")))

    smtp = results.get("smtp", {})
    s10 = smtp.get("2k_10", {}).get("sessions", {})
    ratio_row("SMTP 2 KB msg/s vs aiosmtpd, 1 session",
              _ratio(_median(results, "smtp", "2k_1", "pocketpost"), _median(results, "smtp", "2k_1", "aiosmtpd")), 2,
              failed=pp_failed("smtp", "2k_1"))
    ratio_row("SMTP 2 KB msg/s vs aiosmtpd, 10 sessions",
              _ratio(_median(results, "smtp", "2k_10", "pocketpost"), _median(results, "smtp", "2k_10", "aiosmtpd")), 2,
              f"pocketpost over {s10.get('pocketpost', 4)} sessions (its client limit)"
, failed=pp_failed("smtp", "2k_10"))
    ratio_row("SMTP 1 MB MB/s vs aiosmtpd",
              _ratio(_median(results, "smtp", "1m_1", "pocketpost"), _median(results, "smtp", "1m_1", "aiosmtpd")), 2,
              failed=pp_failed("smtp", "1m_1"))
    ratio_row("POP3 RETR 2 KB msg/s vs Dovecot",
              _ratio(_median(results, "pop3", "2k", "pocketpost"), _median(results, "pop3", "2k", "dovecot")), 0.75)
    ratio_row("POP3 RETR 1 MB MB/s vs Dovecot",
              _ratio(_median(results, "pop3", "1m", "pocketpost"), _median(results, "pop3", "1m", "dovecot")), 0.5)
    ratio_row("POP3 login+STAT+UIDL (1,000 msgs): Dovecot time / pocketpost time",
              _ratio(_median(results, "pop3", "latency", "dovecot"), _median(results, "pop3", "latency", "pocketpost")), 1,
              "≥ 1× is no slower than Dovecot")
    for direction, what in (("in", "SMTP in"), ("out", "POP3 out")):
        value = marginal_alloc(results, direction)
        whole = whole_alloc(results, direction)
        kb = value / KB if value is not None else None
        met = None if kb is None else kb <= 4
        note = (f"whole 1 MB transaction, fixed costs included: {_octets(whole)} per MB"
                if whole is not None else "")
        out.append((f"allocation per MB streamed, {what}", kb, 4, met, _octets(value), "≤ 4 KB", note))
    return out


def _times(n):
    return {1: "once", 2: "twice", 3: "three times"}.get(n, f"{n} times")


def _octets(n):
    """An allocation figure: octets, or KB from 10 KB on."""
    if n is None:
        return "–"
    if abs(n) < 10 * KB:
        return f"{n:,.0f} B"
    return f"{n / KB:,.1f} KB"


def _kb(octets, digits=1):
    return fmt(octets / KB, digits) if octets is not None else "–"


def _verdict(met):
    return "–" if met is None else ("**met**" if met else "**not met**")


# ---- text


def _cell(s, unit):
    if s is None:
        return "–"
    if "error" in s:
        return "FAILED"
    text = fmt(s["median"])
    if "rates" in s and len(s["rates"]) > 1:
        text += f" [{fmt(min(s['rates']))}–{fmt(max(s['rates']))}]"
    if s.get("failed_runs"):
        n = s["failed_runs"]
        text += f" ({n} run{'s' if n > 1 else ''} FAILED)"
    return text


def rows(results):
    """The main table: (section, load, unit, {server: cell}, ratio text)."""
    out = []
    for key, entry in results.get("smtp", {}).items():
        cells = {}
        for name in ("pocketpost", "aiosmtpd", "smtp-sink"):
            s = entry["servers"].get(name)
            cell = _cell(s, entry["unit"])
            n = entry["sessions"].get(name)
            if name == "pocketpost" and n is not None and n != entry["sessions"].get("aiosmtpd"):
                cell += f" ({n} sessions)"
            cells[name] = cell
        r = _ratio(_median(results, "smtp", key, "pocketpost"), _median(results, "smtp", key, "aiosmtpd"))
        r2 = _ratio(_median(results, "smtp", key, "pocketpost"), _median(results, "smtp", key, "smtp-sink"))
        out.append(("SMTP", entry["label"], entry["unit"], cells, f"{fmt(r, 2)}× aiosmtpd, {fmt(r2, 2)}× smtp-sink"))
    for key, entry in results.get("pop3", {}).items():
        cells = {name: _cell(entry["servers"].get(name), entry["unit"]) for name in ("pocketpost", "dovecot")}
        a, b = _median(results, "pop3", key, "pocketpost"), _median(results, "pop3", key, "dovecot")
        if key == "latency":
            text = f"{fmt(_ratio(a, b), 2)}× Dovecot's time"
        else:
            text = f"{fmt(_ratio(a, b), 2)}× Dovecot"
        out.append(("POP3", entry["label"], entry["unit"], cells, text))
    return out


def text_table(results):
    lines = []
    header = f"{'load':<44} {'unit':<6} {'pocketpost':>26} {'aiosmtpd':>22} {'smtp-sink / Dovecot':>24}   ratio"
    lines.append(header)
    lines.append("-" * len(header))
    for section, load, unit, cells, ratio in rows(results):
        third = cells.get("smtp-sink", cells.get("dovecot", ""))
        second = cells.get("aiosmtpd", "")
        lines.append(f"{section + ' ' + load:<44} {unit:<6} {cells['pocketpost']:>26} {second:>22} {third:>24}   {ratio}")
    lines.append("")
    lines.append("targets:")
    for what, _, _, met, shown, target, note in targets(results):
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"  {what:<66} {shown:>10}  (target {target}) {verdict}" + (f"  [{note}]" if note else ""))
    mem = results.get("memory", {})
    if mem.get("rss"):
        lines.append("")
        lines.append("peak RSS: " + ", ".join(f"{name} {fmt(_rss_mb(r))} MB" for name, r in mem["rss"].items())
                     + f"  (an idle unix-port process: {fmt((mem.get('micropython_floor_kb') or 0) / 1024)} MB)")
    heap = mem.get("pocketpost_heap")
    if heap:
        peak = max((l.get("max_used", 0) for l in heap["loads"].values()), default=0)
        lines.append(f"pocketpost heap {heap['heap_size']}: live peak {fmt(peak / KB, 1)} KB (idle {fmt(heap['idle_used'] / KB, 1)} KB)")
    meta = results.get("meta", {})
    if meta.get("seconds"):
        lines.append(f"bench took {meta['seconds']:.0f} s; load average {meta['machine'].get('loadavg_start')} -> {meta['machine'].get('loadavg_end')}")
    return "\n".join(lines)


def _rss_mb(r):
    kb = r.get("hwm_kb") or r.get("peak_sum_kb") or 0
    return kb / 1024


# ---- chart


def draw_chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_ = targets(results)
    ratios = [r for r in rows_ if r[5].endswith("×")]
    allocs = [r for r in rows_ if r[5].endswith("KB")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 1.4]})
    names = [r[0].replace(" vs ", "\nvs ").replace(": ", ":\n") for r in ratios]
    values = [r[1] or 0 for r in ratios]
    colors = ["#3a7d44" if r[3] else ("#b03a2e" if r[3] is not None else "#999999") for r in ratios]
    y = range(len(ratios))
    ax1.barh(list(y), values, color=colors)
    for i, r in enumerate(ratios):
        ax1.plot([r[2], r[2]], [i - 0.42, i + 0.42], color="black", linewidth=2)
        ax1.text((r[1] or 0) * 1.05 + 0.02, i, fmt(r[1], 2) + "×" if r[1] is not None else "pocketpost failed", va="center", fontsize=8)
    ax1.set_yticks(list(y))
    ax1.set_yticklabels(names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("pocketpost ÷ reference (higher is better); black bar: the issue's target")
    ax1.set_xlim(0, max(values + [r[2] for r in ratios]) * 1.25)
    ax1.set_title("Speed ratios (medians, same run)", fontsize=10)

    labels, measured, whole = [], [], []
    for r in allocs:
        labels.append(r[0].replace("allocation per MB streamed, ", ""))
        measured.append(max(r[1] or 0, 0.05))
        direction = "in" if "SMTP" in r[0] else "out"
        w = whole_alloc(results, direction)
        whole.append(max((w or 0) / KB, 0.05))
    x = range(len(labels))
    ax2.bar([i - 0.2 for i in x], measured, width=0.4, label="per MB streamed", color=["#3a7d44" if r[3] else "#b03a2e" for r in allocs])
    ax2.bar([i + 0.2 for i in x], whole, width=0.4, label="whole 1 MB transaction", color="#cccccc")
    ax2.axhline(4, color="black", linewidth=2, label="target 4 KB/MB")
    ax2.set_yscale("log")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(labels, fontsize=8)
    ax2.set_ylabel("KB allocated per MB (log)")
    ax2.set_title("pocketpost heap allocation", fontsize=10)
    for i in x:
        ax2.text(i - 0.2, measured[i] * 1.15, fmt(measured[i]), ha="center", fontsize=7)
        ax2.text(i + 0.2, whole[i] * 1.15, fmt(whole[i]), ha="center", fontsize=7)
    ax2.set_ylim(min(measured + whole + [4]) / 3, max(measured + whole + [4]) * 4)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1, frameon=False)
    meta = results.get("meta", {})
    fig.suptitle(f"pocketpost (unix port, heap {meta.get('heap', '?')}) vs aiosmtpd / Dovecot — {meta.get('started', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the document


def _md_table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def board_paragraph(results):
    """What a board should reach: this run's CPU time per message scaled by the ESP32's
    slowdown, against the published Wi-Fi, SD and FAT figures; the slowest bound wins."""
    lo, hi = ESP32_SLOWDOWN
    smtp_small = _server(results, "smtp", "2k_1", "pocketpost")
    smtp_big = _server(results, "smtp", "1m_1", "pocketpost")
    retr_small = _server(results, "pop3", "2k", "pocketpost")
    retr_big = _server(results, "pop3", "1m", "pocketpost")
    lat = _server(results, "pop3", "latency", "pocketpost")
    parts = [
        f"From this run's CPU time per message (pocketpost's process, measured above) times {lo}–{hi} (the unix "
        "port here against an ESP32 at 240 MHz), and the published ESP32 figures (Wi-Fi TCP 0.6–1.2 MB/s per "
        "MicroPython connection, SD over SPI 0.2–1.5 MB/s, FAT create/open/close/remove 140/104/75/145 ms over "
        "SPI, a small MicroPython reply over Wi-Fi ~115 ms); the slowest bound sets the pace:"
    ]
    items = []
    if smtp_small and smtp_small.get("cpu_per_message_ms"):
        cpu = smtp_small["cpu_per_message_ms"]
        cpu_rate = (1000 / (cpu * hi), 1000 / (cpu * lo))
        items.append(
            f"- **SMTP, 2 KB messages: about {fmt(1 / DELIVERY_S, 1)} msg/s, bound by the card.** The CPU "
            f"({fmt(cpu, 2)} ms a message here) would allow {fmt(cpu_rate[0])}–{fmt(cpu_rate[1])} msg/s, but a "
            f"delivery creates and closes a temp file, opens and closes the index twice and renames the file into "
            f"the mailbox: ~{fmt(DELIVERY_S, 2)} s of FAT operations over SPI. A faster card or SDMMC raises this "
            f"towards the CPU bound; the ~6 round trips of an SMTP transaction cost little beside it."
        )
    if smtp_big and smtp_big.get("cpu_per_message_ms"):
        cpu_mb = smtp_big["cpu_per_message_ms"] / (smtp_big["stored_octets_per_message"] / MB)
        cpu_mbs = (1000 / (cpu_mb * hi), 1000 / (cpu_mb * lo))
        low = min(WIFI_MBS[0], SD_SPI_MBS[0], cpu_mbs[0])
        high = min(WIFI_MBS[1], SD_SPI_MBS[1], cpu_mbs[1])
        items.append(
            f"- **SMTP, 1 MB messages: about {fmt(low, 2)}–{fmt(high, 2)} MB/s.** CPU {fmt(cpu_mb, 1)} ms per MB "
            f"here → {fmt(cpu_mbs[0], 2)}–{fmt(cpu_mbs[1], 2)} MB/s on an ESP32; Wi-Fi {WIFI_MBS[0]}–{WIFI_MBS[1]} "
            f"MB/s; SD writes over SPI {SD_SPI_MBS[0]}–{SD_SPI_MBS[1]} MB/s at best, but only a few KB/s to ~0.23 "
            f"MB/s when written in 512 B blocks (~64 KB writes reach full speed), so the size of the firmware's "
            f"writes to the card decides where in this range a board lands."
        )
    if retr_small and retr_small.get("cpu_per_message_ms"):
        cpu = retr_small["cpu_per_message_ms"]
        cpu_rate = (1000 / (cpu * hi), 1000 / (cpu * lo))
        items.append(
            f"- **POP3 RETR, 2 KB messages: about {fmt(1 / RETR_S, 1)} msg/s, bound by the card.** CPU "
            f"{fmt(cpu, 2)} ms a RETR here → {fmt(cpu_rate[0])}–{fmt(cpu_rate[1])} msg/s; each RETR opens and "
            f"closes the index and the message file (~{fmt(RETR_S, 2)} s over SPI), and a small reply over Wi-Fi "
            f"alone caps it near {fmt(1 / SMALL_REPLY_S, 0)} msg/s."
        )
    if retr_big and retr_big.get("cpu_per_message_ms"):
        cpu_mb = retr_big["cpu_per_message_ms"] / (retr_big["octets_per_message"] / MB)
        cpu_mbs = (1000 / (cpu_mb * hi), 1000 / (cpu_mb * lo))
        low = min(WIFI_MBS[0], SD_SPI_MBS[0], cpu_mbs[0])
        high = min(WIFI_MBS[1], SD_SPI_MBS[1], cpu_mbs[1])
        items.append(
            f"- **POP3 RETR, 1 MB messages: about {fmt(low, 2)}–{fmt(high, 2)} MB/s.** CPU {fmt(cpu_mb, 1)} ms per "
            f"MB here → {fmt(cpu_mbs[0], 2)}–{fmt(cpu_mbs[1], 2)} MB/s; Wi-Fi {WIFI_MBS[0]}–{WIFI_MBS[1]} MB/s; the "
            f"card read in 512 B chunks."
        )
    if lat and lat.get("cpu_per_session_ms"):
        cpu = lat["cpu_per_session_ms"] / 1000
        index = 2 * 1000 * INDEX_RECORD / MB
        fixed = 2 * (FAT_OPEN + FAT_CLOSE)
        low = cpu * lo + fixed + index / SD_SPI_MBS[1]
        high = cpu * hi + fixed + index / SD_SPI_MBS[0]
        items.append(
            f"- **Mail check (connect, login, STAT, UIDL) on 1,000 messages: about {fmt(low, 1)}–{fmt(high, 1)} s.** "
            f"CPU {fmt(cpu * 1000, 1)} ms a session here (login's PBKDF2 of 2,048 iterations included, ~0.2 s on an "
            f"ESP32) → {fmt(cpu * lo, 2)}–{fmt(cpu * hi, 2)} s; two index opens ({fmt(fixed, 2)} s) and 40 KB read "
            f"from the card; a few Wi-Fi round trips on top."
        )
    parts.append("\n".join(items))
    parts.append(
        "Where this is measured: the hardware suite (`pytest -m board -s --board-port /dev/ttyUSB0 --board NAME "
        "--wifi-ssid …`, tests/test_hardware.py) flashes a real board, provisions a user and Wi-Fi, runs "
        "`pocketpost check` against it over Wi-Fi, and `test_throughput_over_wifi` drives these same loads "
        "(`bench/loads.py`: smtp-source, the raw POP3 client) at the board's address and prints SMTP and RETR "
        "rates for 2 KB and 1 MB messages. No board was at hand for this page: the figures above are estimates."
    )
    return "\n\n".join(parts)


def write_doc(results, doc, chart):
    chart.parent.mkdir(parents=True, exist_ok=True)
    draw_chart(results, chart)
    meta = results["meta"]
    m = meta["machine"]
    mem = results.get("memory", {})
    alloc = results.get("alloc", {})
    out = []
    out.append("# Benchmarks: pocketpost against the reference servers\n")
    out.append(
        f"Generated by `make bench` (bench/run.py) on {meta['started']}; rerun it to regenerate this page. "
        f"Medians of {meta['runs']} timed runs per load and server, the servers interleaved run by run after one "
        f"untimed warm-up; all servers on 127.0.0.1 in the same run"
        + (", servers pinned to CPU 0 and clients to CPU 1" if meta.get("pinned") else "")
        + ". pocketpost is the firmware on the emulated board (MicroPython's unix port) with a heap of "
        f"**{meta['heap']}**" + (" (the board's default)" if meta.get("default_heap", meta["heap"]) == meta["heap"]
                                 else f" (**not** the board's default {meta.get('default_heap')})")
        + f". Brackets give the fastest and slowest run. This machine is shared and noisy "
        f"(load average {' '.join(m.get('loadavg_start', []))} at the start, {' '.join(m.get('loadavg_end', []))} "
        f"at the end): compare figures within one run, not across runs.\n"
    )
    fw = meta.get("firmware") or {}
    if fw:
        if fw.get("rev"):
            where = f"firmware/ as committed at {fw['rev']} (`--firmware-rev`; the working tree was not used)"
        elif fw.get("uncommitted_changes") is None:
            where = f"the firmware in `{fw['source']}` (POCKETPOST_FIRMWARE; checkout at {fw.get('commit')})"
        elif fw["uncommitted_changes"]:
            where = f"the checkout's firmware/ at {fw.get('commit')} **with uncommitted changes**"
        else:
            where = f"the checkout's firmware/ at commit {fw.get('commit')}"
        out.append(f"Firmware benchmarked: {where}; source digest {fw.get('sha256')}.\n")
    if meta.get("quick"):
        out.append("**This was a `--quick` run (fewer messages and runs): not for publishing.**\n")
    if results.get("errors"):
        out.append("**Runs that failed** (for pocketpost with the error the firmware logged; all of them in "
                   "build/bench/results.json):\n")
        groups = {}
        for e in results["errors"]:
            what, _, detail = e.partition(": ")
            groups.setdefault(what, []).append(detail)
        lines = []
        for what, details in groups.items():
            first = details[0] if len(details[0]) <= 500 else details[0][:500] + " …"
            lines.append(f"- {what}: {len(details)} run{'s' if len(details) > 1 else ''} failed; the first: {first}")
        out.append("\n".join(lines) + "\n")

    out.append("## Targets (issue 6)\n")
    out.append(_md_table(["what", "measured", "target", "", "note"],
                         [(w, shown, t, _verdict(met), note) for w, _, _, met, shown, t, note in targets(results)]))
    out.append(f"\n![Ratios against the targets]({chart.name})\n")

    out.append("## Throughput and latency\n")
    body = []
    for section, load, unit, cells, ratio in rows(results):
        if section == "SMTP":
            body.append((f"SMTP {load}", unit, cells["pocketpost"], cells["aiosmtpd"], cells["smtp-sink"], "", ratio))
        else:
            body.append((f"POP3 {load}", unit, cells["pocketpost"], "", "", cells["dovecot"], ratio))
    out.append(_md_table(["load", "unit", "pocketpost", "aiosmtpd", "smtp-sink", "Dovecot", "pocketpost ÷"], body))
    smtp10 = results.get("smtp", {}).get("2k_10", {}).get("sessions", {})
    L = meta.get("loads", {})
    probe = mem.get("max_clients_probe") or {}
    if probe.get("boots") is False:
        why = (f"`max_clients` {probe['clients']} (set over the console, applied at the next boot) does not fit the "
               f"{meta['heap']} heap: the firmware does not boot ({probe.get('error')})")
    elif probe.get("boots"):
        why = (f"`max_clients` {probe['clients']} would boot with this heap ({fmt(probe.get('heap_free', 0) / KB, 1)} KB "
               f"free after boot), but every load here runs on the default configuration")
    else:
        why = "`max_clients` 10 was not tried"
    out.append(
        "\nSMTP: Postfix's smtp-source, a new connection per message (its default), 2 KB = 2,048 and 1 MB = "
        "1,048,576 octets of body (smtp-source adds a few header fields); MB/s counts body octets, MB = 2^20 octets. "
        f"pocketpost serves {smtp10.get('pocketpost', 4)} clients at once (config `max_clients`, default 4), so in the "
        "10-session row it gets 4 sessions (the same runs as the 4-session row; smtp-source aborts on the 421 a "
        f"client over the limit gets): {why}. Each pocketpost run delivers into a new, empty mailbox; "
        "aiosmtpd's Maildir is emptied between runs; smtp-sink stores nothing.\n\n"
        "POP3: the raw client of bench/loads.py (TCP_NODELAY, one command at a time, replies only searched for "
        "their end), one session per run. Both mailboxes are filled by the same smtp-source commands (pocketpost "
        "through its own SMTP, Dovecot through the tests' aiosmtpd that delivers into its Maildir). "
        f"A RETR 2 KB run reads messages 1–{L.get('retr_small', 1000):,} {_times(L.get('retr_small_passes', 1))}; "
        f"a RETR 1 MB run reads messages {L.get('pop_small', 1000) + 1:,}–{L.get('pop_small', 1000) + L.get('pop_big', 10):,} "
        f"{_times(L.get('retr_big_passes', 1))}, added to the same mailbox after the mail-check figure was taken "
        f"on exactly {L.get('pop_small', 1000):,} messages ({L.get('latency_runs', '?')} mail checks). "
        "pocketpost's login verifies a PBKDF2-SHA256 hash of 2,048 iterations (the host tools' default); Dovecot's "
        "passwd-file holds the password in plain text, and Dovecot runs without its POP3 session lock (its default).\n"
    )
    lat = results.get("pop3", {}).get("latency")
    if lat:
        body = []
        for name in ("pocketpost", "dovecot"):
            p = lat["servers"][name]["phases"]
            body.append((name, fmt(p["connect_greeting"], 2), fmt(p["login"], 2), fmt(p["stat"], 2), fmt(p["uidl"], 2), fmt(p["total"], 2)))
        out.append("Mail check, medians in ms by step:\n")
        out.append(_md_table(["server", "connect+greeting", "USER+PASS", "STAT", "UIDL", "total"], body) + "\n")

    out.append("## CPU\n")
    body = []

    def cpu(section, key, name):
        entry = results.get(section, {}).get(key, {})
        s = entry.get("servers", {}).get(name) or {}
        if "error" in s:
            return None, "FAILED"
        value = s.get("cpu_per_session_ms" if key == "latency" else "cpu_per_message_ms")
        return value, fmt(value, 3)

    for key, entry in results.get("smtp", {}).items():
        (pp, a), (ai, b), (_, c) = (cpu("smtp", key, n) for n in ("pocketpost", "aiosmtpd", "smtp-sink"))
        body.append((f"SMTP {entry['label']}", a, b, c, "", f"{fmt(_ratio(ai, pp), 2)}× aiosmtpd"))
    for key, entry in results.get("pop3", {}).items():
        (pp, a), (dv, d) = (cpu("pop3", key, n) for n in ("pocketpost", "dovecot"))
        body.append((f"POP3 {entry['label']}" + (" (per session)" if key == "latency" else ""), a, "", "", d,
                     f"{fmt(_ratio(dv, pp), 2)}× Dovecot"))
    out.append(
        "Server CPU time per message (user+system from /proc: every thread, and for Dovecot every process of its "
        "tree including the pop3 and login processes it reaped), ms, medians. On a busy shared machine this moves "
        "much less than wall-clock rates do; the last column is the reference's CPU per message over pocketpost's "
        "(above 1: pocketpost uses less CPU).\n"
    )
    out.append(_md_table(["load", "pocketpost", "aiosmtpd", "smtp-sink", "Dovecot", "efficiency vs reference"], body) + "\n")

    out.append("## Memory\n")
    rss = mem.get("rss", {})
    floor = mem.get("micropython_floor_kb")
    body = []
    notes = {
        "pocketpost": f"one process: the unix port's `micropython` is a CPython entry point hosting the MicroPython VM, so this includes a CPython interpreter; the same command idle (`micropython -X heapsize={meta['heap']}`, no firmware) has {fmt((floor or 0) / 1024, 1)} MB",
        "aiosmtpd": "one process (CPython, asyncio, the Maildir handler); each message is held whole in RAM",
        "smtp-sink": "one process (C), stores nothing",
        "dovecot": "sum over its processes (master, log, config, anvil, auth, pop3-login, pop3), sampled every 50 ms; shared libraries count once per process",
    }
    for name, r in rss.items():
        exact = r.get("hwm_kb")
        shown = fmt(exact / 1024, 1) if exact else fmt((r.get("peak_sum_kb") or 0) / 1024, 1)
        extra = "" if exact else f" (up to {r.get('processes')} processes; largest one {fmt((r.get('peak_process_hwm_kb') or 0) / 1024, 1)} MB)"
        body.append((name, shown + extra, "VmHWM" if exact else "sampled", notes.get(name, "")))
    out.append(_md_table(["server", "peak RSS, MB", "how", "note"], body) + "\n")
    heap = mem.get("pocketpost_heap")
    if heap:
        body = [("idle, after the timed runs", "", fmt(heap["idle_used"] / KB, 1), fmt(heap["idle_free"] / KB, 1))]
        for key, l in heap["loads"].items():
            if "error" in l:
                body.append((l["label"], "", "FAILED", l["error"][:300] + (" …" if len(l["error"]) > 300 else "")))
            else:
                samples = str(l["samples"])
                if l.get("failed_samples"):
                    samples += f" (+{l['failed_samples']} `info` refused: {l['sample_error']})"
                body.append((l["label"], samples, _kb(l["max_used"] if l["samples"] else None), _kb(l["min_free"])))
        out.append(
            f"pocketpost's MicroPython heap ({heap['heap_size']}): the live heap while a load runs, sampled with the "
            "console's `info` (which collects garbage first, so `heap_used` is what is live) about every 50 ms in a "
            f"separate, untimed pass. Each `info` allocates ~{fmt((alloc.get('info_request') or 0) / KB)} KB itself, "
            "so on a nearly full heap the sampling adds to the pressure it measures. (`micropython.mem_peak()` is no "
            "heap high-water mark on this port: it counts allocations minus explicit frees, never what the GC "
            "reclaims; the firmware does not report it.)\n"
        )
        out.append(_md_table(["load", "samples", "max live heap, KB", "min free heap, KB"], body) + "\n")

    out.append("## Allocation\n")
    body = []
    for direction, what, small_key, big_key, section in (
        ("in", "SMTP in (smtp-source → pocketpost)", "2k_1", "1m_1", "smtp"),
        ("out", "POP3 out (RETR)", "2k", "1m", "pop3"),
    ):
        small = _server(results, section, small_key, "pocketpost")
        big = _server(results, section, big_key, "pocketpost")
        marg = marginal_alloc(results, direction)
        fat_file, fat_mb, device = fat_alloc(results, direction)
        own = marg - fat_mb if marg is not None and fat_mb is not None else None
        body.append((
            what,
            _octets(small.get("alloc_per_message") if small else None),
            _octets(big.get("alloc_per_message") if big else None),
            _octets(whole_alloc(results, direction)),
            _octets(marg),
            f"{_octets(fat_file)} a file, {_octets(fat_mb)} per MB",
            _octets(device),
            _octets(own),
        ))
    out.append(_md_table(["direction", "per 2 KB message", "per 1 MB message", "per MB, whole 1 MB transaction",
                          "per MB streamed", "emulated SD card (FatFS + block device)", "its Python block device, per MB",
                          "firmware's own, per MB streamed"], body))
    fat = alloc.get("fat")
    out.append(
        "\nBytes the MicroPython heap allocated (`micropython.mem_total()`, the console's `heap_allocated_total`), "
        f"from `info` before and after each timed run minus what one `info` request allocates itself "
        f"({fmt(alloc.get('info_request'))} bytes); medians. SMTP counts the whole smtp-source transaction "
        "(connection, commands, DATA, delivery, log lines); POP3 counts the RETR commands of a logged-in session. "
        "*Per MB streamed* is the part that grows with the message: (per 1 MB message − per 2 KB message) ÷ their "
        "size difference; the rest is a fixed cost per message (the first column). *Firmware's own* is what is "
        "streamed less what the emulated card allocates per MB.\n"
    )
    if fat:
        out.append(
            "The emulated SD card on its own (bench/fat_alloc.py, in the unix port alone with the same heap): a 1 MB "
            f"file written in 1 KB chunks and read back in 512 B `readinto`s through os.VfsFat over the board's "
            f"FileBlockDevice allocated {fmt(fat['write_alloc'])} and {fmt(fat['read_alloc'])} bytes, as much as a "
            f"2 KB file (opening and closing it); FatFS called writeblocks/readblocks {sum(fat['write_calls']):,} and "
            f"{sum(fat['read_calls']):,} times, and those Python methods allocate "
            f"{fmt(fat['writeblocks_alloc_per_call'], 2)} / {fmt(fat['readblocks_alloc_per_call'], 2)} bytes per call "
            "(their frames live on the C stack and the block buffer is passed without a copy). So the emulated card "
            "adds next to nothing: what is measured is the firmware's own allocation (with the asyncio streams it "
            "uses), and an ESP32 with machine.SDCard would allocate the same.\n"
        )

    out.append("## What a board should reach\n")
    out.append(board_paragraph(results) + "\n")

    out.append("## How it was run\n")
    cmds = meta.get("commands", {})
    argv = " ".join(meta.get("argv") or [])
    out.append("```\nmake bench" + (f" BENCH_OPTIONS='{argv}'" if argv else "")
               + "   # = scripts/ensure-debian-packages dovecot-pop3d postfix; .venv/bin/python bench/run.py"
               + (f" {argv}" if argv else "") + "\n```\n")
    out.append("Servers (ports are free loopback ports chosen at run time):\n")
    out.append("```\n" + "\n".join(f"{k}: {cmds[k]}" for k in ("pocketpost", "aiosmtpd", "smtp-sink", "dovecot") if k in cmds) + "\n```\n")
    out.append("Loads:\n")
    out.append("```\n" + "\n".join(f"{k}: {v}" for k, v in cmds.items() if k.startswith(("smtp_", "fill_", "fat"))) + "\n"
               "POP3: bench/loads.py RawPop3 (login_stat_uidl; RETR n one at a time)\n```\n")
    out.append("## Machine\n")
    body = [
        ("CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"),
        ("OS, kernel", f"{m.get('os', '')}, Linux {m['kernel']}"),
        ("Python (host, clients, aiosmtpd)", m["python"]),
        ("MicroPython (unix port)", m["micropython"]),
        ("PyPI packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())),
        ("Debian packages", ", ".join(f"{k} {v}" for k, v in m["debian"].items())),
        ("bench run time", f"{meta.get('seconds', 0):.0f} s"),
    ]
    out.append(_md_table(["", ""], body) + "\n")
    doc.write_text("\n".join(out))
