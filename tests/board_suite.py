"""The hardware test suite's options (a pytest plugin loaded by conftest.py).

    pytest -m board --board-port /dev/ttyUSB0 --board esp32-devkitc --wifi-ssid NAME \
        [--wifi-password PASSWORD | $POCKETPOST_WIFI_PASSWORD] [--board-firmware BASE.bin] [--board-erase]

Without --board-port, --board and --wifi-ssid the tests marked `board` are deselected (pytest's
summary counts them as deselected, never as passed or skipped)."""

import os

BOARD_OPTIONS = ("--board-port", "--board", "--wifi-ssid")


def pytest_addoption(parser):
    group = parser.getgroup("board", "hardware tests on a real board (pytest -m board)")
    group.addoption("--board-port", help="the board's serial port, e.g. /dev/ttyUSB0")
    group.addoption("--board", help="its board definition, e.g. esp32-devkitc (pocketpost boards)")
    group.addoption("--wifi-ssid", help="the Wi-Fi network the board joins")
    group.addoption("--wifi-password", default=os.environ.get("POCKETPOST_WIFI_PASSWORD", ""),
                    help="its password (default: $POCKETPOST_WIFI_PASSWORD)")
    group.addoption("--board-firmware", help="the MicroPython firmware .bin to flash with the app "
                    "(default: the filesystem only, onto the MicroPython the board runs)")
    group.addoption("--board-erase", action="store_true", help="erase the whole flash first (needs --board-firmware)")


def pytest_configure(config):
    config.addinivalue_line("markers", "board: needs a real board (pytest -m board --board-port ... --board ... --wifi-ssid ...)")


def pytest_collection_modifyitems(config, items):
    if all(config.getoption(option) for option in BOARD_OPTIONS):
        return
    board = [item for item in items if item.get_closest_marker("board")]
    if board:
        config.hook.pytest_deselected(items=board)
        items[:] = [item for item in items if not item.get_closest_marker("board")]
