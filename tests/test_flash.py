"""`pocketpost flash`: esptool as a library against a fake board on a loopback socket (its
flasher stub, then its firmware's console), and the errors a user meets."""

import socket

import pytest
import serial.tools.list_ports
from click.testing import CliRunner

from pocketpost_host import boards, cli

from fake_esptool import FakeBoard
from test_build import base_firmware


@pytest.fixture
def fake_board():
    made = []

    def make(chip="esp32", **kwargs):
        fake = FakeBoard(chip, **kwargs)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "ESP32_GENERIC-20241129-v1.24.1.bin"
    path.write_bytes(base_firmware(boards.load("esp32-devkitc")))
    return path


def run_cli(*args):
    return CliRunner().invoke(cli.cli, list(args), prog_name="pocketpost")


def test_flash_writes_the_merged_image_and_says_what_is_left_to_do(fake_board, base, tmp_path):
    fake = fake_board("esp32")
    result = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--firmware", str(base),
                     "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    merged = (tmp_path / "out" / "pocketpost-esp32-devkitc.bin").read_bytes()
    assert fake.flash[0x1000 : 0x1000 + len(merged)] == merged  # byte for byte, at the firmware's offset
    assert fake.flash[:0x1000] == b"\xff" * 0x1000
    assert 0x13 in fake.commands  # esptool verified the MD5 of what it wrote
    assert fake.console_requests[:2] == ["hello", "info"]
    assert result.stdout.splitlines() == [
        f"pocketpost 0.1.0 is running on {fake.url} (esp32, board esp32-devkitc)",
        f"to do: add a user: pocketpost --port {fake.url} user add NAME",
        f"to do: set up Wi-Fi: pocketpost --port {fake.url} config set wifi_ssid NETWORK, then "
        f"pocketpost --port {fake.url} config set wifi_password PASSWORD",
    ]
    assert "writing 100%" in result.stderr  # the progress
    assert "Hash of data verified." in result.stderr


def test_flash_without_firmware_writes_the_filesystem_only(fake_board, tmp_path):
    fake = fake_board("esp32", info={"firmware": "0.1.0", "board": "esp32-devkitc", "users": 2, "wifi": "connected",
                                     "ip": "192.0.2.7", "rssi": -55, "storage": {"state": "ok"}})
    result = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    fs = (tmp_path / "out" / "pocketpost-esp32-devkitc-fs.bin").read_bytes()
    assert fake.flash[0x200000:] == fs and set(fake.flash[:0x200000]) == {0xFF}
    assert "no --firmware: writing the filesystem only, at 0x200000" in result.stderr
    assert result.stdout.splitlines()[1:] == ["Wi-Fi: 192.0.2.7 (RSSI -55 dBm)", "nothing left to provision"]


def test_wrong_chip_is_refused_before_anything_is_written(fake_board, base, tmp_path):
    fake = fake_board("esp32s3")
    result = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--firmware", str(base),
                     "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: the board on {fake.url} is an ESP32-S3, not an ESP32: is --board right? (pocketpost boards lists them)"
    )
    assert 0x10 not in fake.commands and set(fake.flash) == {0xFF}


def test_firmware_problems_are_found_before_the_port_is_opened(fake_board, tmp_path):
    fake = fake_board("esp32")
    missing = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--firmware", str(tmp_path / "no.bin"),
                      "--out", str(tmp_path / "out"))
    assert (missing.exit_code, missing.stderr) == (1, f"Error: firmware file {tmp_path / 'no.bin'} does not exist\n")
    s3 = tmp_path / "s3.bin"
    s3.write_bytes(base_firmware(boards.load("esp32-s3-devkitc")))
    other = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--firmware", str(s3), "--out", str(tmp_path / "out"))
    assert (other.exit_code, other.stderr) == (1, f"Error: {s3} is firmware for esp32s3; board esp32-devkitc has an esp32\n")
    assert fake.commands == []  # nobody talked to the board
    erase = run_cli("flash", "--board", "esp32-devkitc", "--port", fake.url, "--erase", "--out", str(tmp_path / "out"))
    assert erase.exit_code == 1 and "--erase needs --firmware" in erase.stderr
    unix = run_cli("flash", "--board", "unix", "--port", fake.url)
    assert unix.exit_code == 1 and "the unix board is not flashed: `pocketpost sim` runs it" in unix.stderr


def test_no_port(monkeypatch, tmp_path):
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
    result = run_cli("flash", "--board", "esp32-devkitc", "--out", str(tmp_path / "out"))
    assert (result.exit_code, result.stderr) == (
        5, "Error: no ESP32 serial adapter found (seen: no serial ports at all); plug the board in or give --port\n")
    result = run_cli("flash", "--board", "esp32-devkitc", "--port", str(tmp_path / "ttyUSB9"), "--out", str(tmp_path / "out"))
    assert (result.exit_code, result.stderr) == (
        5, f"Error: port {tmp_path / 'ttyUSB9'} does not exist (is the board plugged in?)\n")
    # A port nobody answers on (nothing listens on the socket).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = "socket://127.0.0.1:{}".format(s.getsockname()[1])
    result = run_cli("flash", "--board", "esp32-devkitc", "--port", url, "--out", str(tmp_path / "out"))
    assert result.exit_code == 5
    assert result.stderr.splitlines()[-1] == (
        f"Error: cannot talk to the board's bootloader on {url}: Could not open {url}, the port is busy or doesn't exist.")


class _Port:
    def __init__(self, device, vid, pid):
        self.device, self.vid, self.pid, self.description = device, vid, pid, "USB serial"


def test_auto_detection_looks_for_the_boards_usb_ids(monkeypatch):
    from pocketpost_host import transport

    # A LOLIN D32 Pro (CH340C) and an unrelated adapter: flash --board lolin-d32-pro finds the first.
    monkeypatch.setattr(serial.tools.list_ports, "comports",
                        lambda: [_Port("/dev/ttyUSB0", 0x1A86, 0x7523), _Port("/dev/ttyACM0", 0x2341, 0x0043)])
    assert transport.detect_port(boards.load("lolin-d32-pro").usb_ids) == "/dev/ttyUSB0"
    with pytest.raises(transport.PortError, match="no ESP32 serial adapter found"):
        transport.detect_port(boards.load("esp32-s3-devkitc").usb_ids)
    # MicroPython's own USB id on the ESP32-S3 comes from the board definitions.
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [_Port("/dev/ttyACM0", 0x303A, 0x4001)])
    assert transport.detect_port() == "/dev/ttyACM0"
