# The ESP32 boards: MicroPython's esp32 port. The internal flash is the LittleFS "vfs" partition
# MicroPython's _boot.py mounts at "/" (the app, /board.json, /config.json, /users); the SD card
# is machine.SDCard as /board.json describes it; the network is Wi-Fi station mode; a watchdog
# restarts a board whose event loop hangs. Only the esp32 port imports this module (boot picks
# the board layer by feature test), so none of it costs the unix board's heap.
import asyncio
import gc
import json
import os
import sys
import time

import machine
import network

from micropython import const

SD_MOUNT = "/sd"
_SD_TRIES = const(3)
# Wi-Fi: a join that has not given an address after this long is given up; failed joins are
# retried after 1 s, doubling up to 60 s; a connected link is checked every 2 s.
_JOIN_MS = const(20000)
_BACKOFF_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_POLL_MS = const(2000)
# NTP: tried every minute until it works, then again every 6 hours.
_NTP_RETRY_MS = const(60000)
_NTP_EVERY_MS = const(21600000)
_TICK_MS = const(250)  # the watchdog feed and the status LED
# A heap bigger than this is in PSRAM (an ESP32 without PSRAM has ~100-150 KB of it).
_PSRAM_HEAP = const(1048576)
_PSRAM_TLS_SESSIONS = const(4)
# What an OSError from machine.SDCard/os.mount means (FatFS's codes as MicroPython maps them).
_SD_ERRORS = {5: "card read error", 16: "no card, or the card does not answer", 19: "no FAT file system on the card", 110: "card timed out", 116: "card timed out", 259: "SD host busy"}
_RESETS = (("PWRON_RESET", "power on"), ("HARD_RESET", "reset button or power glitch"), ("WDT_RESET", "watchdog"), ("DEEPSLEEP_RESET", "deep sleep"), ("SOFT_RESET", "soft reset"))


def _wifi_reason(code):
    # The last three are ESP-IDF reason codes that MicroPython names only in some builds; a wrong
    # password often ends in a handshake time-out rather than STAT_WRONG_PASSWORD.
    names = {
        network.STAT_WRONG_PASSWORD: "wrong password",
        network.STAT_NO_AP_FOUND: "no access point with that name",
        network.STAT_CONNECTING: "rejoining",
        network.STAT_IDLE: "idle",
        getattr(network, "STAT_HANDSHAKE_TIMEOUT", 204): "handshake timed out (wrong password?)",
        getattr(network, "STAT_ASSOC_FAIL", 203): "the access point refused to associate",
        getattr(network, "STAT_BEACON_TIMEOUT", 200): "lost the access point's signal",
    }
    return names.get(code) or "status {}".format(code)


class Esp32Board:
    # The console's test hooks (debug.hold) are for the emulated board only.
    debug_requests = False
    boot_hold = None

    def __init__(self, definition):
        self.definition = definition
        self.name = definition.get("name", "esp32")
        self.overrides = {}
        # A MicroPython built for PSRAM (SPIRAM) puts its heap there, megabytes of it, and
        # mbedTLS allocates from PSRAM too: room for more TLS sessions at once (each takes
        # ~20-36 KB during the session). Without PSRAM the heap is ~100-150 KB and one is the
        # default.
        self.psram = gc.mem_free() + gc.mem_alloc() > _PSRAM_HEAP
        self.defaults = {"tls_max_sessions": _PSRAM_TLS_SESSIONS} if self.psram else {}
        self.storage_state = "not mounted"
        self.card = None
        self.wlan = None
        self.wifi_state = "off"
        self.address = None
        self.online = asyncio.Event()
        self.ntp = "not synced"
        self.wdt = None
        self.led = None
        self.reset_cause = "unknown"
        cause = machine.reset_cause()
        for attr, text in _RESETS:
            if getattr(machine, attr, None) == cause:
                self.reset_cause = text

    @classmethod
    def from_flash(cls):
        """The board /board.json describes (pocketpost build puts it there)."""
        try:
            with open("/board.json") as f:
                return cls(json.load(f))
        except (OSError, ValueError):
            return cls({"name": "esp32", "missing": True})

    # ---- storage

    def mount_flash(self, log):
        """MicroPython's _boot.py has mounted the internal flash at "/" already."""
        log.info("board", "last reset: {}".format(self.reset_cause))
        if self.definition.get("missing"):
            log.warn("board", "no /board.json: SD card and LED use MicroPython's defaults (pocketpost deploy --board NAME puts it there)")
        return ""

    def mount_sd(self, log):
        """Mounts the card as the board definition says, trying a few times; returns its path, or
        None when it cannot be used (the servers then refuse mail with temporary errors)."""
        spec = self.definition.get("sd") or {}
        args = {}
        for key in ("slot", "width", "sck", "mosi", "miso", "cs", "cd", "wp", "freq"):
            if key in spec:
                args[key] = spec[key]
        code = 0
        for attempt in range(_SD_TRIES):
            card = None
            try:
                card = machine.SDCard(**args)
                os.mount(os.VfsFat(card), SD_MOUNT)
                self.card = card
                self.storage_state = "ok"
                return SD_MOUNT
            except OSError as e:
                code = e.errno if isinstance(e.errno, int) else 0
                if card is not None:
                    card.deinit()  # else the next SDCard() finds the host still in use
                log.warn("board", "SD card, attempt {} of {}: {}".format(attempt + 1, _SD_TRIES, _SD_ERRORS.get(code) or e))
                time.sleep_ms(500 * (attempt + 1))
        self.storage_state = "error: {}".format(_SD_ERRORS.get(code) or "OSError {}".format(code))
        log.error("board", "the SD card cannot be used ({}): mail is refused with temporary errors; fix the card and reboot".format(self.storage_state))
        return None

    def unmount(self):
        """Unmounts the card. The watchdog cannot be stopped: a timer feeds it from now on, so the
        REPL that follows a Ctrl-C (mpremote, pocketpost deploy) is not reset under the user."""
        if self.card is not None:
            try:
                os.umount(SD_MOUNT)
            except OSError:
                pass
            self.card.deinit()
            self.card = None
        if self.wdt is not None:
            wdt = self.wdt
            machine.Timer(0, mode=machine.Timer.PERIODIC, period=1000, callback=lambda t: wdt.feed())

    # ---- network

    async def network_up(self, config, log):
        """Starts the watchdog and the Wi-Fi task; returns the address to listen on once the board
        has one (the console keeps working meanwhile)."""
        seconds = self.definition.get("watchdog_s", 60)
        try:
            self.wdt = machine.WDT(timeout=seconds * 1000)
            log.info("board", "watchdog: {} s".format(seconds))
        except (OSError, ValueError) as e:
            log.exception("board", "no watchdog", e)
        self._start_led()
        asyncio.create_task(self._tick())
        self.wlan = network.WLAN(network.STA_IF)
        asyncio.create_task(self._wifi(config, log))
        await self.online.wait()
        return config["bind"]

    async def _wifi(self, config, log):
        """Joins the configured network, with growing pauses after failures, and joins again
        whenever the link drops; sets the clock by NTP while online."""
        wlan = self.wlan
        backoff = _BACKOFF_MS
        joining = None  # ticks_ms of the join in progress
        retry_at = time.ticks_ms()
        ntp_at = 0
        said_unconfigured = False
        while True:
            now = time.ticks_ms()
            if wlan.isconnected():
                if self.wifi_state != "connected":
                    self.wifi_state = "connected"
                    self.address = wlan.ifconfig()[0]
                    joining = None
                    backoff = _BACKOFF_MS
                    ntp_at = now
                    log.info("board", "Wi-Fi connected to {}: address {}, RSSI {} dBm".format(config["wifi_ssid"], self.address, self._rssi()))
                    self.online.set()
                if time.ticks_diff(now, ntp_at) >= 0:
                    ntp_at = time.ticks_add(now, self._sync_time(log))
                await asyncio.sleep_ms(_POLL_MS)
                continue
            if self.wifi_state == "connected":
                self.wifi_state = "reconnecting"
                log.warn("board", "Wi-Fi link lost ({})".format(_wifi_reason(wlan.status())))
                joining = now  # the port rejoins by itself first
            status = wlan.status()
            if joining is not None:
                if status == network.STAT_CONNECTING and time.ticks_diff(now, joining) < _JOIN_MS:
                    await asyncio.sleep_ms(_TICK_MS)
                    continue
                log.warn("board", "Wi-Fi: cannot join {} ({}); next try in {} s".format(config["wifi_ssid"], "timed out" if status == network.STAT_CONNECTING else _wifi_reason(status), backoff // 1000))
                self.wifi_state = "failed: " + _wifi_reason(status)
                try:
                    wlan.disconnect()  # stop the port's own rejoining before ours
                except OSError:
                    pass
                joining = None
                retry_at = time.ticks_add(now, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_MS)
            ssid = config["wifi_ssid"]
            if not ssid:
                if not said_unconfigured:
                    said_unconfigured = True
                    self.wifi_state = "not configured"
                    log.warn("board", "Wi-Fi is not configured: pocketpost config set wifi_ssid NAME, then wifi_password; the board joins as soon as they are set")
                await asyncio.sleep_ms(1000)
                continue
            if time.ticks_diff(now, retry_at) < 0:
                await asyncio.sleep_ms(_TICK_MS)
                continue
            self.wifi_state = "connecting"
            try:
                network.hostname(config["hostname"])
                wlan.active(True)
                wlan.config(reconnects=3)  # the port's own rejoins after a drop, then ours
                wlan.connect(ssid, config["wifi_password"])
                log.info("board", "Wi-Fi: joining {} as {}".format(ssid, config["hostname"]))
                joining = now
            except OSError as e:
                log.exception("board", "Wi-Fi", e)
                retry_at = time.ticks_add(now, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_MS)

    def _rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):
            return None

    def _sync_time(self, log):
        """Sets the clock by NTP; returns the milliseconds until the next sync."""
        try:
            import ntptime

            ntptime.settime()
        except Exception as e:  # DNS, time-out, a short answer: mail goes on with the old clock
            if self.ntp == "not synced":
                log.warn("board", "NTP: {}: {}; the clock is not set".format(type(e).__name__, e))
            return _NTP_RETRY_MS
        t = time.gmtime()
        if self.ntp == "not synced":
            log.info("board", "clock set by NTP: {}-{:02d}-{:02d} {:02d}:{:02d}:{:02d} UTC".format(*t[:6]))
        self.ntp = "synced"
        return _NTP_EVERY_MS

    # ---- status LED and watchdog

    def _start_led(self):
        spec = self.definition.get("led")
        if not spec:
            return
        try:
            pin = machine.Pin(spec["pin"], machine.Pin.OUT)
            if spec["kind"] == "neopixel":
                import neopixel

                self.led = neopixel.NeoPixel(pin, 1)
            else:
                self.led = pin
        except (OSError, ValueError, ImportError):
            self.led = None

    def _show(self, on, colour):
        led = self.led
        if led is None:
            return
        spec = self.definition["led"]
        if spec["kind"] == "neopixel":
            led[0] = colour if on else (0, 0, 0)
            led.write()
        else:
            led.value((not on) if spec.get("active_low") else on)

    def beat(self):
        """Called once a second by the event loop; the watchdog is fed by _tick, with the LED."""

    async def _tick(self):
        """Feeds the watchdog while the event loop runs; the LED says how the board is: steady
        when serving, slow blink (blue) while Wi-Fi is not up, fast blink (red) without storage."""
        n = 0
        while True:
            if self.wdt is not None:
                self.wdt.feed()
            n += 1
            if self.storage_state != "ok":
                self._show(n & 1, (40, 0, 0))
            elif self.wifi_state != "connected":
                self._show(n & 4, (0, 0, 40))
            else:
                self._show(True, (0, 30, 0))
            await asyncio.sleep_ms(_TICK_MS)

    # ---- the rest of the board interface

    @staticmethod
    def peer_address(stream):
        raw = stream.get_extra_info("peername")
        if isinstance(raw, tuple):  # lwIP on the esp32 port: ("192.168.1.20", 52344)
            return raw[0]
        return "{}.{}.{}.{}".format(raw[4], raw[5], raw[6], raw[7])  # a raw IPv4 sockaddr

    @staticmethod
    def console_stream():
        return asyncio.StreamReader(sys.stdin.buffer)

    console_out = sys.stdout

    def info(self):
        out = {"reset_cause": self.reset_cause, "wifi": self.wifi_state, "ntp": self.ntp, "psram": self.psram}
        if self.wifi_state == "connected":
            out["ip"] = self.address
            out["rssi"] = self._rssi()
        try:
            import esp32

            out["idf_heap_free"] = sum(h[1] for h in esp32.idf_heap_info(esp32.HEAP_DATA))
        except (ImportError, AttributeError):
            pass
        return out

    def reset(self, reason):
        machine.reset()
