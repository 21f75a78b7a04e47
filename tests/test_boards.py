"""Board definitions: every one is valid, cites a source for its pins, and the wiring diagrams
are what the definitions give."""

import re

import pytest

from pocketpost_host import boards

NAMES = boards.names()


def test_the_boards_the_issue_asks_for():
    assert NAMES == ["esp32-cam", "esp32-devkitc", "esp32-s3-devkitc", "lolin-d32-pro", "unix"]


@pytest.mark.parametrize("name", NAMES)
def test_definition_is_valid(name):
    board = boards.load(name)
    assert boards.check(board) == []
    if board.emulated:
        return
    d = board.definition
    assert board.fs_offset + board.fs_size <= boards.parse_size(d["flash_size"])
    assert board.firmware_offset == (0 if board.chip == "esp32s3" else 0x1000)
    assert board.usb_ids and d["console"]["kind"] in ("uart", "native-usb")
    assert d["micropython"]["firmware"].startswith(d["micropython"]["board"])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "unix"])
def test_readme_cites_a_source_for_every_pin(name):
    board = boards.load(name)
    readme = (board.folder / "README.md").read_text()
    sd = board.definition["sd"]
    pins = [sd[k] for k in ("sck", "mosi", "miso", "cs") if k in sd] + list(sd.get("pins", {}).values())
    if board.definition["led"]:
        pins.append(board.definition["led"]["pin"])
    for pin in pins:
        assert re.search(rf"GPIO{pin}\b", readme), f"GPIO{pin} is not in {name}'s README"
    assert "https://" in readme
    for usb in board.definition["console"]["usb"]:
        assert f"{int(usb['vid'], 16):04X}:{int(usb['pid'], 16):04X}" in readme


@pytest.mark.parametrize("name", [n for n in NAMES if boards.load(n).needs_wiring])
def test_wiring_diagram_is_generated_from_the_definition(name):
    board = boards.load(name)
    assert (board.folder / boards.WIRING_FILE).read_text() == boards.wiring_svg(board)
    assert "![wiring](wiring.svg)" in (board.folder / "README.md").read_text()
    sd = board.definition["sd"]
    assert [w[:2] for w in boards.wiring(board)] == [
        ("3V3", "VCC"), ("GND", "GND"), (f"GPIO{sd['cs']}", "CS"), (f"GPIO{sd['mosi']}", "MOSI"),
        (f"GPIO{sd['sck']}", "SCK"), (f"GPIO{sd['miso']}", "MISO"),
    ]


def test_a_broken_definition_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "board.json").write_text('{"name": "mine", "chip": "esp8266", "flash_size": "4MB", "micropython": {},'
                                       ' "filesystem": {"offset": "0x3f0000", "size": "0x20000"},'
                                       ' "sd": {"interface": "spi", "sck": 18}, "console": {"kind": "usb"}}')
    monkeypatch.setenv("POCKETPOST_BOARDS", str(tmp_path))
    with pytest.raises(boards.PocketpostError) as e:
        boards.load("mine")
    message = str(e.value)
    for problem in ("chip must be one of", "micropython.version is missing", "inside the flash",
                    "an SPI card needs sck, mosi, miso and cs pins", "console.kind must be one of"):
        assert problem in message
    with pytest.raises(boards.PocketpostError, match="no board 'nothing'; boards: mine"):
        boards.load("nothing")
