"""The hardware suite: flashes a real board, provisions a user and Wi-Fi over its console, runs
`pocketpost check` against it over Wi-Fi and measures it with `make bench`'s loads (the figures
docs/benchmarks.md estimates for a board). Only with a board (README "Real boards"):

    pytest -m board --board-port /dev/ttyUSB0 --board esp32-devkitc --wifi-ssid NAME \
        [--wifi-password PASSWORD] [--board-firmware ESP32_GENERIC-20241129-v1.24.1.bin]

Otherwise deselected (tests/board_suite.py). The board needs a FAT32 card in its slot; its
data on the internal flash is replaced by the flash."""

import secrets
import sys
import time
from pathlib import Path

import pytest

from pocketpost_host import check, flash
from pocketpost_host.provision import Board

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import loads  # noqa: E402  (make bench's loads: smtp-source and the raw POP3 client)

pytestmark = pytest.mark.board

USER = "check"
WIFI_TIMEOUT = 90


@pytest.fixture(scope="module")
def hardware(request, tmp_path_factory):
    option = request.config.getoption
    return {
        "port": option("--board-port"),
        "board": option("--board"),
        "ssid": option("--wifi-ssid"),
        "password": option("--wifi-password"),
        "firmware": option("--board-firmware"),
        "erase": option("--board-erase"),
        "out": tmp_path_factory.mktemp("build"),
    }


@pytest.fixture(scope="module")
def flashed(hardware):
    """The board, flashed and answering on its console."""
    result = flash.flash(hardware["board"], port=hardware["port"], base_firmware=hardware["firmware"],
                         erase=hardware["erase"], out=hardware["out"], emit=print)
    assert result.hello["firmware"]
    return result


@pytest.fixture(scope="module")
def provisioned(hardware, flashed):
    """A user and the Wi-Fi settings on the board; waits until it has an address."""
    password = secrets.token_urlsafe(12)
    with Board.open(hardware["port"], timeout=10) as board:
        if USER not in [u["name"] for u in board.list_users()]:
            board.add_user(USER, password)
        else:
            board.change_password(USER, password)
        board.set_config("wifi_ssid", hardware["ssid"])
        board.set_config("wifi_password", hardware["password"])
        board.reboot()
    deadline = time.monotonic() + WIFI_TIMEOUT
    info = {}
    while time.monotonic() < deadline:
        try:
            with Board.open(hardware["port"], timeout=10) as board:
                info = board.info()
        except Exception:  # rebooting: the port comes and goes
            time.sleep(2)
            continue
        if info.get("wifi") == "connected" and info.get("bind"):
            return info, password
        time.sleep(2)
    pytest.fail(f"the board did not join {hardware['ssid']} within {WIFI_TIMEOUT} s: {info}")


def test_flash_says_what_to_provision(flashed):
    assert flashed.chip
    assert flashed.info["board"]
    assert isinstance(flashed.todo(), list)


def test_board_reports_its_state(provisioned):
    info, _ = provisioned
    assert info["storage"]["state"] == "ok", "the board needs a FAT32 card: " + str(info["storage"])
    assert info["reset_cause"] in ("power on", "reset button or power glitch", "soft reset", "watchdog", "deep sleep")
    assert isinstance(info["rssi"], int) and -100 < info["rssi"] < 0


def test_check_passes_over_wifi(provisioned):
    info, password = provisioned
    target = check.Target(host=info["ip"], user=USER, password=password, domain=info["domains"][0],
                          pop3_port=info["ports"]["pop3"], smtp_port=info["ports"]["smtp"], timeout=60,
                          large_size=1 << 20)
    report = check.run_checks(target)
    assert {r.name: (r.result, r.detail) for r in report.results if r.result != check.PASS} == {}


# Bounded: 20 small and 2 large messages, each step under the loads' own time limits.
SMALL_MESSAGES = 20
LARGE_MESSAGES = 2


def test_throughput_over_wifi(provisioned):
    """Delivers and fetches with make bench's loads over Wi-Fi, prints the rates (what
    docs/benchmarks.md estimates for a board), checks every message arrived whole, then deletes
    them. A measurement, not a timed assertion."""
    info, password = provisioned
    host, smtp_port, pop3_port = info["ip"], info["ports"]["smtp"], info["ports"]["pop3"]
    rcpt = "{}@{}".format(USER, info["domains"][0])
    with loads.login(host, pop3_port, USER, password) as c:
        n = c.cmd("STAT")
        before = int(bytes(c.buf[4:n]).split()[0])
        c.quit()
    small_s = loads.run_smtp_source(host, smtp_port, rcpt, 2048, SMALL_MESSAGES, 1)
    large_s = loads.run_smtp_source(host, smtp_port, rcpt, 1 << 20, LARGE_MESSAGES, 1)
    with loads.login(host, pop3_port, USER, password) as c:
        n = c.cmd("STAT")
        assert int(bytes(c.buf[4:n]).split()[0]) == before + SMALL_MESSAGES + LARGE_MESSAGES
        first = before + 1
        retr_small_s, _ = loads.retr_range(c, first, first + SMALL_MESSAGES - 1, min_octets=2048)
        first += SMALL_MESSAGES
        retr_large_s, large_octets = loads.retr_range(c, first, first + LARGE_MESSAGES - 1, min_octets=1 << 20)
        for number in range(before + 1, first + LARGE_MESSAGES):
            c.cmd("DELE {}".format(number))
        c.quit()
    print(
        "\n{} over Wi-Fi: SMTP 2 KB {:.1f} msg/s, SMTP 1 MB {:.3f} MB/s, RETR 2 KB {:.1f} msg/s, "
        "RETR 1 MB {:.3f} MB/s".format(
            info["board"], SMALL_MESSAGES / small_s, LARGE_MESSAGES / large_s, SMALL_MESSAGES / retr_small_s,
            large_octets / retr_large_s / (1 << 20),
        )
    )
