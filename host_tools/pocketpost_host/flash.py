"""`pocketpost flash`: builds the board's image and writes it with esptool (as a library), then
waits for the firmware's console to answer `hello` and says what still needs provisioning.

With a base MicroPython firmware the merged image (firmware + filesystem) is written at the
firmware's offset: a blank board becomes a pocketpost board. Without one, only the filesystem
partition is written, onto a board that already runs the MicroPython the definition names.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import serial

from . import boards, build
from .errors import BoardTimeout, PocketpostError, PortError
from .provision import Board
from .transport import detect_port

# Seconds the firmware may take from reset to answering `hello` (first boot formats nothing on
# the ESP32: the image has its file system; the card check and Wi-Fi come after the console).
HELLO_TIMEOUT = 30.0
# esptool's speed after it connected (it starts at 115200, the ROM's speed).
FLASH_BAUD = 460800


class WrongChip(PocketpostError):
    """The board on the port is not the chip the board definition names."""


@dataclass
class FlashResult:
    port: str
    chip: str
    offset: int
    image: Path
    hello: dict | None = None
    info: dict | None = None

    def todo(self) -> list[str]:
        """What still needs doing before the board serves mail (from its `info`)."""
        if self.info is None:
            return []
        port = self.port
        steps = []
        if not self.info.get("users"):
            steps.append(f"add a user: pocketpost --port {port} user add NAME")
        if self.info.get("wifi") in (None, "not configured") and "wifi" in self.info:
            steps.append(
                f"set up Wi-Fi: pocketpost --port {port} config set wifi_ssid NETWORK, then "
                f"pocketpost --port {port} config set wifi_password PASSWORD"
            )
        storage = self.info.get("storage", {}).get("state")
        if storage not in (None, "ok"):
            steps.append(f"the SD card cannot be used ({storage}): insert a FAT32-formatted card and reboot")
        return steps


def _chip_name(esp) -> str:
    """esptool's CHIP_NAME ("ESP32-S3") as a board definition names chips ("esp32s3")."""
    return esp.CHIP_NAME.lower().replace("-", "")


def write_image(port: str, chip: str, offset: int, image: bytes, erase: bool = False, baud: int = FLASH_BAUD,
                emit=print, progress=None) -> str:
    """Writes `image` at `offset` with esptool: connects, checks the chip is `chip`, runs the
    flasher stub, optionally erases the whole flash, writes (compressed, verified by MD5) and
    resets the board. Returns the chip esptool found. `progress(done, total)` follows the write."""
    from esptool.cmds import attach_flash, detect_chip, erase_flash, reset_chip, run_stub, write_flash
    from esptool.util import FatalError

    def on_output(item):
        if isinstance(item, tuple):
            if progress is not None:
                progress(item[1], item[2])
        else:
            emit(item)

    with build.esptool_output(on_output):
        try:
            esp = detect_chip(port, connect_attempts=3)
        except (FatalError, OSError, serial.SerialException) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PortError(f"cannot talk to the board's bootloader on {port}: {first}") from None
        try:
            found = _chip_name(esp)
            if found != chip:
                raise WrongChip(
                    f"the board on {port} is an {esp.CHIP_NAME}, not an {chip.upper()}: "
                    "is --board right? (pocketpost boards lists them)"
                )
            esp = run_stub(esp)
            if baud and not port.startswith(("socket:", "rfc2217:")):
                esp.change_baud(baud)
            attach_flash(esp)
            if erase:
                erase_flash(esp)
            write_flash(esp, [(offset, image)])
            reset_chip(esp, "hard-reset")
        except FatalError as e:
            raise PocketpostError(f"esptool: {(str(e).strip().splitlines() or ['failed'])[0]}") from None
        finally:
            esp._port.close()
    return found


def wait_for_console(port: str, timeout: float = HELLO_TIMEOUT, info: bool = True) -> tuple[dict, dict | None]:
    """Greets the firmware until it answers (a board on native USB disappears from the bus for a
    moment while it resets); returns (hello, its `info`, or None when not asked for)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with Board.open(port, timeout=max(1.0, min(5.0, deadline - time.monotonic()))) as session:
                hello = {"protocol": 1, "firmware": session.firmware}
                return hello, session.info() if info else None
        except (PortError, BoardTimeout) as e:
            last = e
            time.sleep(0.5)
    raise BoardTimeout(f"the board did not answer on {port} after the flash ({last})")


def flash(board_name: str, port: str | None = None, base_firmware: Path | None = None, erase: bool = False,
          out: Path | None = None, emit=print, progress=None, hello_timeout: float = HELLO_TIMEOUT) -> FlashResult:
    """Builds and writes the image of `board_name`; waits for the firmware to answer."""
    board = boards.load(board_name)
    if board.emulated:
        raise PocketpostError("the unix board is not flashed: `pocketpost sim` runs it")
    if erase and base_firmware is None:
        raise PocketpostError("--erase needs --firmware: an erased board has no MicroPython left to boot")
    result = build.build(board, out=out, base_firmware=base_firmware)  # checks the firmware file first
    if port is None:
        port = detect_port(board.usb_ids)
    elif "://" not in port and not os.path.exists(port):
        raise PortError(f"port {port} does not exist (is the board plugged in?)")
    if result.merged is not None:
        image_path, offset = result.merged, result.write_offset
    else:
        image_path, offset = result.fs_image, result.fs_offset
        emit(
            f"no --firmware: writing the filesystem only, at 0x{offset:x}; the board must already run "
            f"MicroPython {board.micropython.get('board')} {board.micropython.get('version')}"
        )
    for note in result.notes:
        emit(f"note: {note}")
    emit(f"writing {image_path} ({image_path.stat().st_size} octets) at 0x{offset:x} on {port}")
    chip = write_image(port, board.chip, offset, image_path.read_bytes(), erase=erase, emit=emit, progress=progress)
    flashed = FlashResult(port=port, chip=chip, offset=offset, image=image_path)
    emit("waiting for the firmware to answer on its console")
    flashed.hello, flashed.info = wait_for_console(port, hello_timeout)
    return flashed
