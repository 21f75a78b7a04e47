"""Board definitions (boards/<name>/board.json): loading, checking, the USB ids the port
auto-detection looks for, and the wiring diagram of boards that need an SD breakout wired.

Adding a board is adding a folder: board.json, README.md (the vendor source of every pin) and,
for a breakout, wiring.svg, which `python -m pocketpost_host.boards` regenerates from board.json
(a test keeps the committed file equal to what the definition gives).
"""

import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import firmware
from .errors import PocketpostError

# esptool's chip names for the chips a definition may name.
CHIPS = ("esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6")
SD_INTERFACES = ("spi", "sdmmc")
LED_KINDS = ("gpio", "neopixel")
CONSOLE_KINDS = ("uart", "native-usb")
# The filesystem MicroPython's ESP32 port puts on its "vfs" partition.
FS_BLOCK_SIZE = 4096
WIRING_FILE = "wiring.svg"
_CHIP_NAMES = {"esp32": "ESP32", "esp32s2": "ESP32-S2", "esp32s3": "ESP32-S3", "esp32c3": "ESP32-C3", "esp32c6": "ESP32-C6"}


def parse_size(value) -> int:
    """Octets from 4096, "0x200000", "4MB", "2M" or "512K"."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lower().startswith("0x"):
        return int(text, 16)
    match = re.fullmatch(r"([0-9]+)\s*([KMG]?)B?", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size")
    return int(match.group(1)) << (10 * " KMG".index(match.group(2).upper() or " "))


def names() -> list[str]:
    """The boards defined, sorted."""
    return sorted(p.parent.name for p in firmware.boards_dir().glob("*/board.json"))


@dataclass(frozen=True)
class Board:
    """A board definition with its values parsed."""

    name: str
    definition: dict
    folder: Path

    @property
    def emulated(self) -> bool:
        """The unix board: MicroPython's unix port, no chip, no flash image to write."""
        return self.definition.get("micropython", {}).get("port") == "unix"

    @property
    def chip(self) -> str | None:
        return self.definition.get("chip")

    @property
    def micropython(self) -> dict:
        return self.definition.get("micropython", {})

    @property
    def version(self) -> tuple[int, ...]:
        """The MicroPython version the definition was written for (its minimum for unix)."""
        text = self.micropython.get("version") or self.micropython.get("min_version", "0")
        return tuple(int(x) for x in text.split("."))

    @property
    def firmware_offset(self) -> int | None:
        """Where the base MicroPython firmware image goes in flash."""
        offset = self.micropython.get("offset")
        return None if offset is None else parse_size(offset)

    @property
    def fs_offset(self) -> int | None:
        fs = self.definition.get("filesystem")
        return parse_size(fs["offset"]) if fs else None

    @property
    def fs_size(self) -> int:
        fs = self.definition.get("filesystem")
        if fs:
            return parse_size(fs["size"])
        return parse_size(self.definition["flash"]["size"])  # the unix board's flash image

    @property
    def fs_partition(self) -> str | None:
        fs = self.definition.get("filesystem")
        return fs["partition"] if fs else None

    @property
    def fs_block_size(self) -> int:
        fs = self.definition.get("filesystem") or self.definition["flash"]
        return int(fs.get("block_size", FS_BLOCK_SIZE))

    @property
    def usb_ids(self) -> dict[tuple[int, int], str]:
        """(VID, PID) -> name of the USB serial devices this board's console shows up as."""
        usb = self.definition.get("console", {}).get("usb", [])
        return {(int(u["vid"], 16), int(u["pid"], 16)): u["name"] for u in usb}

    @property
    def needs_wiring(self) -> bool:
        return "wiring" in self.definition


def load(name: str) -> Board:
    """The definition of board `name`; PocketpostError names the boards there are."""
    folder = firmware.boards_dir() / name
    if not (folder / "board.json").is_file():
        raise PocketpostError(f"no board {name!r}; boards: {', '.join(names())}")
    board = Board(name, firmware.board_definition(name), folder)
    problems = check(board)
    if problems:
        raise PocketpostError(f"board definition {folder / 'board.json'} is not valid: " + "; ".join(problems))
    return board


def check(board: Board) -> list[str]:
    """What is wrong with a definition (empty when nothing)."""
    d = board.definition
    problems = []
    if d.get("name") != board.name:
        problems.append(f"name must be the folder's name {board.name!r}")
    if board.emulated:
        return problems
    for key in ("chip", "flash_size", "micropython", "filesystem", "sd", "console"):
        if key not in d:
            problems.append(f"{key} is missing")
    if problems:
        return problems
    if d["chip"] not in CHIPS:
        problems.append(f"chip must be one of {', '.join(CHIPS)}")
    mp = d["micropython"]
    for key in ("port", "board", "version", "offset"):
        if key not in mp:
            problems.append(f"micropython.{key} is missing")
    fs = d["filesystem"]
    try:
        offset, size = parse_size(fs["offset"]), parse_size(fs["size"])
        if offset % 0x1000 or size % FS_BLOCK_SIZE or offset + size > parse_size(d["flash_size"]):
            problems.append("filesystem offset/size must be 4 KB aligned and inside the flash")
    except (KeyError, ValueError) as e:
        problems.append(f"filesystem: {e}")
    sd = d["sd"]
    if sd.get("interface") not in SD_INTERFACES:
        problems.append(f"sd.interface must be one of {', '.join(SD_INTERFACES)}")
    elif sd["interface"] == "spi" and not all(isinstance(sd.get(k), int) for k in ("sck", "mosi", "miso", "cs")):
        problems.append("an SPI card needs sck, mosi, miso and cs pins")
    elif sd["interface"] == "sdmmc" and sd.get("width") not in (1, 4):
        problems.append("an SDMMC card needs width 1 or 4")
    led = d.get("led")
    if led is not None and (led.get("kind") not in LED_KINDS or not isinstance(led.get("pin"), int)):
        problems.append(f"led must be null or {{kind: {'/'.join(LED_KINDS)}, pin}}")
    console = d["console"]
    if console.get("kind") not in CONSOLE_KINDS:
        problems.append(f"console.kind must be one of {', '.join(CONSOLE_KINDS)}")
    for usb in console.get("usb", []):
        if not all(re.fullmatch(r"0x[0-9A-Fa-f]{4}", str(usb.get(k, ""))) for k in ("vid", "pid")):
            problems.append("console.usb entries need vid and pid as 0xXXXX")
    if "wiring" in d and sd.get("interface") != "spi":
        problems.append("wiring is drawn for SPI breakouts only")
    return problems


def all_usb_ids() -> dict[tuple[int, int], str]:
    """The USB serial devices of every board defined."""
    ids = {}
    for name in names():
        try:
            ids.update(load(name).usb_ids)
        except PocketpostError:
            continue
    return ids


def firmware_definition(board: Board) -> bytes:
    """board.json as it goes onto the board: compact, keys sorted (the same bytes every build)."""
    return json.dumps(board.definition, sort_keys=True, separators=(",", ":")).encode()


# ---- the wiring diagram

# The signals of an SPI microSD breakout, in the order breakouts print them, with colours.
_SPI_WIRES = (
    ("power", "VCC", "#d62728"),
    ("ground", "GND", "#222222"),
    ("cs", "CS", "#9467bd"),
    ("mosi", "MOSI", "#1f77b4"),
    ("sck", "SCK", "#ff7f0e"),
    ("miso", "MISO", "#2ca02c"),
)


def wiring(board: Board) -> list[tuple[str, str, str]]:
    """(board pin, breakout pin, colour) for each wire, from the definition."""
    d = board.definition
    sd, spec = d["sd"], d["wiring"]
    wires = []
    for key, label, colour in _SPI_WIRES:
        pin = spec.get(key) if key in ("power", "ground") else f"GPIO{sd[key]}"
        wires.append((pin, label, colour))
    return wires


def wiring_svg(board: Board) -> str:
    """The wiring diagram of a board with an SD breakout, as SVG text (the same for the same
    definition: no dates, no random ids)."""
    wires = wiring(board)
    d = board.definition
    # Wide enough for the title (bold 15 px: about 9 px a character).
    width, row, top = max(760, 9 * len(d["description"]) + 40), 34, 76
    bottom = top + row * len(wires)  # the boxes end here
    height = bottom + 74
    left, right = 40, width - 230  # the boxes' left edges
    e = html.escape
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="14">'.format(width, height),
        "<title>{}: SD card wiring</title>".format(e(board.name)),
        '<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>'.format(width, height),
        '<text x="20" y="28" font-size="15" font-weight="bold">{}</text>'.format(e(d["description"])),
        '<text x="20" y="50" fill="#555555">generated from boards/{}/board.json by pocketpost_host.boards'
        "</text>".format(e(board.name)),
    ]
    for x, fill, stroke, label in ((left, "#e8eef7", "#34495e", _CHIP_NAMES.get(d["chip"], d["chip"].upper()) + " board"),
                                   (right, "#f4f1e8", "#7a6a3a", "microSD breakout")):
        out.append('<rect x="{}" y="{}" width="190" height="{}" rx="8" fill="{}" stroke="{}"/>'.format(
            x, top - 10, row * len(wires) + 6, fill, stroke))
        out.append('<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>'.format(
            x + 95, bottom + 18, e(label)))
    for i, (pin, label, colour) in enumerate(wires):
        y = top + 12 + i * row
        out.append('<text x="{}" y="{}" text-anchor="end">{}</text>'.format(left + 175, y + 5, e(pin)))
        out.append('<circle cx="{}" cy="{}" r="4" fill="{}"/>'.format(left + 190, y, colour))
        out.append('<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{3}" stroke-width="3"/>'.format(
            left + 190, y, right, colour))
        out.append('<circle cx="{}" cy="{}" r="4" fill="{}"/>'.format(right, y, colour))
        out.append('<text x="{}" y="{}">{}</text>'.format(right + 15, y + 5, e(label)))
    sd = d["sd"]
    out.append(
        '<text x="{}" y="{}" text-anchor="middle" fill="#555555" font-family="DejaVu Sans Mono, monospace" '
        'font-size="13">machine.SDCard(slot={}, sck={}, mosi={}, miso={}, cs={}, freq={})</text>'.format(
            width // 2, bottom + 52, sd["slot"], sd["sck"], sd["mosi"], sd["miso"], sd["cs"], sd["freq"]))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_wiring_diagrams() -> list[Path]:
    """Regenerates wiring.svg of every board that needs wiring; returns the files written."""
    written = []
    for name in names():
        board = load(name)
        if board.needs_wiring:
            path = board.folder / WIRING_FILE
            path.write_text(wiring_svg(board))
            written.append(path)
    return written


if __name__ == "__main__":  # python -m pocketpost_host.boards: regenerate the wiring diagrams
    for written_path in write_wiring_diagrams():
        print(written_path)
    sys.exit(0)
