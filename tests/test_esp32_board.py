"""The ESP32 board layer (firmware/pocketpost/board/esp32.py), run for real in the unix port from
a flash image built for an ESP32 board, on fakes of machine, network, ntptime and esp32 that
follow MicroPython's documented APIs (tests/fakes): SD card mounting and its failures, Wi-Fi with
back-off and rejoining, NTP, the watchdog, the reset cause, the status LED."""

import re
import smtplib
import time

import pytest

from fake_esp32 import FakeEsp32, board_variant, compile_fakes
from wire import Wire

AP = {"ssid": "home", "password": "secret", "ip": "127.0.0.1", "rssi": -61, "join_ms": 100}
WIFI_CONFIG = {"wifi_ssid": "home", "wifi_password": "secret"}
NTP_TIME = 1780000000


@pytest.fixture(scope="session")
def fakes(tmp_path_factory):
    return compile_fakes(tmp_path_factory.mktemp("fakes"))


@pytest.fixture
def make_esp32(fakes, tmp_path):
    made = []

    def make(board=None, hardware=None, config=WIFI_CONFIG, name=None, heap=None):
        state = {"wifi": dict(AP), "ntp": {"ok": True, "time": NTP_TIME}}
        state.update(hardware or {})
        extra = {"heap": heap} if heap else {}
        esp = FakeEsp32(fakes, tmp_path / (name or f"esp{len(made)}"), board or board_variant(), state, config, **extra)
        made.append(esp)
        return esp

    yield make
    for esp in made:
        if esp.proc is not None:
            try:
                esp.stop()
            except AssertionError:
                esp.kill()


def log_index(esp, pattern, start=0):
    for i, line in enumerate(esp.lines[start:], start):
        if re.search(pattern, line):
            return i
    return None


def send_and_fetch(esp, user="alice", password="wonderland"):
    with smtplib.SMTP("127.0.0.1", esp.smtp_port, timeout=20) as smtp:
        smtp.sendmail("bob@example.org", [f"{user}@pocketpost.local"], "Subject: hi\r\n\r\nover the fake Wi-Fi\r\n")
    pop3 = esp.pop3()
    pop3.user(user)
    pop3.pass_(password)
    body = pop3.retr(1)[1]
    pop3.quit()
    return body


def test_boots_from_the_image_joins_wifi_and_serves_mail(make_esp32):
    # The first joins fail (no access point): the port rejoins by itself 3 times, then the
    # board backs off and tries again.
    esp = make_esp32(hardware={"wifi": dict(AP, fail=[201, 201, 201, 201])}).start()
    assert log_index(esp, r"WARN board: Wi-Fi: cannot join home \(no access point with that name\); next try in 1 s")
    assert log_index(esp, r"INFO board: Wi-Fi connected to home: address 127\.0\.0\.1, RSSI -61 dBm")
    ready = log_index(esp, "INFO boot: ready")
    assert log_index(esp, r"INFO pop3: listening on 127\.0\.0\.1:") < ready  # only once an address exists
    assert log_index(esp, r"INFO board: clock set by NTP: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
    events = esp.events()
    sd = esp.board.definition["sd"]
    assert events[0] == "SDCard slot=2 width=1 sck={} mosi={} miso={} cs={} freq={}".format(
        sd["sck"], sd["mosi"], sd["miso"], sd["cs"], sd["freq"])
    assert "WDT timeout=3000" in events
    assert "hostname pocketpost" in events
    assert events.count("wifi connect home") == 2
    assert f"ntp settime {NTP_TIME}" in events

    esp.add_user("alice", "wonderland")
    assert send_and_fetch(esp)[-1] == b"over the fake Wi-Fi"
    info = esp.info()
    assert info["board"] == "esp32-devkitc"
    assert (info["wifi"], info["ip"], info["rssi"], info["ntp"]) == ("connected", "127.0.0.1", -61, "synced")
    assert info["reset_cause"] == "power on"
    assert info["storage"]["state"] == "ok"
    assert info["bind"] == "127.0.0.1"
    assert info["idf_heap_free"] == 200000


def test_waits_for_wifi_settings_and_joins_once_they_are_set(make_esp32):
    esp = make_esp32(config={}).start(until="Wi-Fi is not configured")
    assert any("WARN board: Wi-Fi is not configured: pocketpost config set wifi_ssid NAME" in line for line in esp.lines)
    # The console serves while there is no network.
    assert esp.request("hello")["board"] == "esp32-devkitc"
    info = esp.info()
    assert (info["wifi"], info["bind"]) == ("not configured", None)
    esp.add_user("alice", "wonderland")
    esp.set_config(wifi_password="secret", wifi_ssid="home")
    assert esp.wait_log("INFO boot: ready", timeout=10)
    assert send_and_fetch(esp)[-1] == b"over the fake Wi-Fi"


def test_reboot_while_waiting_for_wifi(make_esp32):
    esp = make_esp32(config={}).start(until="Wi-Fi is not configured")
    assert esp.request("reboot") == {}
    assert esp.wait_exit() == 75  # the fake machine.reset(): the servers never started
    assert esp.events()[-1] == "reset"


def test_wrong_password_backs_off_longer_each_time(make_esp32):
    esp = make_esp32(config={"wifi_ssid": "home", "wifi_password": "wrong"}).start(until="next try in 2 s")
    failures = [line for line in esp.lines if "cannot join home" in line]
    assert [re.search(r"next try in (\d+) s", line).group(1) for line in failures] == ["1", "2"]
    assert all("(wrong password)" in line for line in failures)
    assert esp.info()["wifi"] == "failed: wrong password"
    esp.set_config(wifi_password="secret")  # read at the next try
    assert esp.wait_log("INFO boot: ready", timeout=10)


def test_rejoins_when_the_link_drops_and_keeps_serving(make_esp32):
    esp = make_esp32().start()
    esp.add_user("alice", "wonderland")
    esp.set_hardware(wifi={"down": True})
    assert esp.wait_log("WARN board: Wi-Fi link lost", timeout=10)
    assert esp.info()["wifi"] in ("reconnecting", "failed: no access point with that name")
    esp.set_hardware(wifi={"down": False})
    deadline = time.monotonic() + 15
    while sum("Wi-Fi connected to home" in line for line in esp.lines) < 2:
        assert time.monotonic() < deadline, "\n".join(esp.lines[-20:])
        time.sleep(0.1)
    assert esp.info()["wifi"] == "connected"
    assert send_and_fetch(esp)[-1] == b"over the fake Wi-Fi"  # the servers listened throughout


def test_no_card_is_a_clear_error_and_mail_gets_temporary_errors(make_esp32):
    esp = make_esp32(hardware={"sd": {"image": "sd.img", "present": False}}).start()
    tries = [line for line in esp.lines if "WARN board: SD card, attempt" in line]
    assert len(tries) == 3 and all("no card, or the card does not answer" in line for line in tries)
    assert log_index(esp, r"ERROR board: the SD card cannot be used \(error: no card, or the card does not answer\)")
    assert esp.events().count("SDCard deinit") == 3  # the host is released after each failed try
    assert esp.info()["storage"] == {"state": "error: no card, or the card does not answer"}
    esp.add_user("alice", "wonderland")  # users live on the internal flash
    wire = Wire(esp.pop3_port)
    assert wire.line().startswith("+OK")
    assert wire.cmd("USER alice").startswith("+OK")
    assert wire.cmd("PASS wonderland") == "-ERR [SYS/TEMP] Mail storage is not available, try again later."
    with smtplib.SMTP("127.0.0.1", esp.smtp_port, timeout=20) as smtp:
        smtp.ehlo()
        assert smtp.mail("bob@example.org") == (451, b"4.3.0 Mail storage is not available, try again later")


def test_card_without_a_file_system(make_esp32, tmp_path):
    host = tmp_path / "blank"
    host.mkdir()
    (host / "sd.img").write_bytes(bytes(1 << 20))
    esp = make_esp32(name="blank").start()
    assert esp.info()["storage"] == {"state": "error: no FAT file system on the card"}


def test_card_pulled_while_running_gives_temporary_errors(make_esp32):
    esp = make_esp32().start()
    esp.add_user("alice", "wonderland")
    esp.set_hardware(sd={"present": False})
    time.sleep(0.1)
    with smtplib.SMTP("127.0.0.1", esp.smtp_port, timeout=20) as smtp:
        smtp.ehlo()
        smtp.mail("bob@example.org")
        smtp.rcpt("alice@pocketpost.local")
        code, _ = smtp.data(b"Subject: lost\r\n\r\ngone\r\n")
    assert 400 <= code < 500
    assert esp.proc.poll() is None  # no crash


def test_watchdog_resets_a_hung_board_and_info_reports_why(make_esp32):
    esp = make_esp32().start()
    esp.set_hardware(hang=True)  # the next Wi-Fi check never returns
    esp.wait_exit(timeout=15)
    assert esp.watchdog_fired
    esp.set_hardware(hang=False, reset_cause=3)  # what the chip reports after a watchdog reset
    esp.start()
    assert log_index(esp, "INFO board: last reset: watchdog")
    assert esp.info()["reset_cause"] == "watchdog"


def test_tls_sessions_default_to_more_with_psram(make_esp32):
    """A MicroPython with its heap in PSRAM (megabytes: here a 2 MB heap) allows 4 TLS sessions
    at once by default; without, 1. A stored setting still wins."""
    plain = make_esp32(name="plain").start()
    assert plain.info()["psram"] is False
    assert plain.request("config.get", key="tls_max_sessions")["value"] == 1
    psram = make_esp32(name="psram", heap="2048k").start()
    assert psram.info()["psram"] is True
    assert psram.request("config.get", key="tls_max_sessions")["value"] == 4
    psram.set_config(tls_max_sessions=2)
    assert psram.request("config.get", key="tls_max_sessions")["value"] == 2


def test_keeps_working_without_ntp(make_esp32):
    esp = make_esp32(hardware={"ntp": {"ok": False}}).start()
    assert log_index(esp, r"WARN board: NTP: OSError: \[Errno 110\] ETIMEDOUT; the clock is not set")
    esp.add_user("alice", "wonderland")
    assert send_and_fetch(esp)[-1] == b"over the fake Wi-Fi"
    assert esp.info()["ntp"] == "not synced"


def test_ctrl_c_leaves_the_watchdog_fed_for_the_repl_and_reboot_resets(make_esp32):
    esp = make_esp32().start()
    assert esp.stop() == 0
    events = esp.events()
    assert "SDCard deinit" in events
    assert events[-1] == "Timer 0 mode=1 period=1000"  # feeds the watchdog while the REPL runs
    esp.start()
    esp.request("reboot")
    assert esp.wait_exit() == 75  # the fake machine.reset()
    assert esp.events()[-1] == "reset"


def test_status_led(make_esp32):
    # LOLIN D32 Pro: an LED on GPIO5, lit by a low level. Steady once serving.
    esp = make_esp32(board=board_variant("lolin-d32-pro")).start()
    assert esp.wait_event("pin 5 0")
    assert esp.events()[0].startswith("SDCard slot=2 width=1 sck=18 mosi=23 miso=19 cs=4 ")
    # ESP32-S3-DevKitC-1: an RGB LED; green when serving, fast red blink without a card.
    s3 = make_esp32(board=board_variant("esp32-s3-devkitc"), name="s3").start()
    assert s3.wait_event("neopixel (0, 30, 0)")
    nocard = make_esp32(board=board_variant("esp32-s3-devkitc"), name="s3b",
                        hardware={"sd": {"image": "sd.img", "present": False}}).start()
    assert nocard.wait_event("neopixel (40, 0, 0)") and nocard.wait_event("neopixel (0, 0, 0)")


def test_sdmmc_board_opens_the_slot_it_is_defined_with(make_esp32):
    esp = make_esp32(board=board_variant("esp32-cam")).start()
    assert esp.events()[0] == "SDCard slot=1 width=1 sck=None mosi=None miso=None cs=None freq=20000000"
    assert esp.info()["storage"]["state"] == "ok"

