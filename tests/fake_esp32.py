"""An ESP32 board in the unix port: the firmware of a flash image built for an ESP32 board runs
with its real ESP32 board layer, on the fakes of machine, network, ntptime, esp32 and neopixel in
tests/fakes (they follow MicroPython's documented APIs), which act on the hardware the test
describes in HOST/hardware.json: the card, the access point, NTP, the reset cause. The test plays
the watchdog's hardware: a board that stops feeding it is killed, as the chip would be reset."""

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from pocketpost_host import boards, build, firmware

from emulated_board import EmulatedBoard, free_port

FAKES = Path(__file__).resolve().parent / "fakes"
# The unix board's heap plus what the fakes take (~21 KB of the 64-bit heap, measured), so the
# firmware has the same room as on the unix board.
HEAP = "{}k".format(int(firmware.DEFAULT_HEAP.rstrip("k")) + 24)
BOOT_SCRIPT = "esp32_boot.py"


def compile_fakes(dest: Path) -> Path:
    """The fakes as .mpy (compiling .py at import would take heap the firmware needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    for py in sorted(FAKES.glob("*.py")):
        if py.name == BOOT_SCRIPT:
            shutil.copyfile(py, dest / py.name)
            continue
        cmd = firmware.mpy_cross_command() + [f"-O{firmware.OPT}", "-o", str(dest / (py.stem + ".mpy")), str(py)]
        subprocess.run(cmd, check=True, capture_output=True)
    return dest


def board_variant(name="esp32-devkitc", **changes) -> boards.Board:
    """A board definition from boards/, with `changes` to its definition (a short watchdog)."""
    board = boards.load(name)
    definition = dict(board.definition, watchdog_s=3)
    definition.update(changes)
    return dataclasses.replace(board, definition=definition)


def make_fat_image(path: Path, size: int = 8 << 20):
    """A FAT-formatted card image, made by MicroPython's own FatFS."""
    with open(path, "wb") as f:
        f.truncate(size)
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(firmware.source_dir())!r})\n"
        "from pocketpost.board.unix import FileBlockDevice\n"
        f"os.VfsFat.mkfs(FileBlockDevice({str(path)!r}, 512))\n"
    )
    subprocess.run([firmware.find_micropython(), "-c", script], check=True, timeout=30)


class FakeEsp32(EmulatedBoard):
    def __init__(self, fakes_dir, host_dir, board: boards.Board, hardware: dict, config: dict | None = None,
                 heap=HEAP, out_dir=None):
        self.host = Path(host_dir)
        self.host.mkdir(parents=True, exist_ok=True)
        super().__init__(None, self.host, heap=heap)
        self.fakes_dir = Path(fakes_dir)
        self.board = board
        # The TLS and submission ports are off (a firmware without them ignores the keys).
        settings = {"bind": "127.0.0.1", "pop3_port": self.pop3_port, "smtp_port": self.smtp_port,
                    "pop3s_port": 0, "smtps_port": 0, "submission_port": 0}
        settings.update(config or {})
        result = build.build(board, out=out_dir or self.host / "build", config=settings)
        shutil.copyfile(result.fs_image, self.host / "flash.img")
        self.image = result
        self.hardware_state = {"reset_cause": 1, "sd": {"image": "sd.img", "present": True}}
        self.hardware_state.update(hardware)
        self._mtime = 0
        self._write_hardware()
        if not (self.host / "sd.img").exists():
            make_fat_image(self.host / "sd.img")
        self.env = dict(os.environ, MICROPYPATH=str(self.fakes_dir))
        self.watchdog_fired = False
        self._watching = None

    def command(self):
        return [firmware.find_micropython(), "-X", f"heapsize={self.heap}", str(self.fakes_dir / BOOT_SCRIPT), str(self.host)]

    def start(self, timeout=30, until="INFO boot: ready"):
        (self.host / "wdt").unlink(missing_ok=True)
        self.watchdog_fired = False
        super().start(timeout, until)
        self._watching = threading.Thread(target=self._watchdog, args=(self.proc,), daemon=True)
        self._watching.start()
        return self

    def _watchdog(self, proc):
        """Kills the process when the firmware's watchdog has not been fed in time (what the
        chip's timer does)."""
        wdt = self.host / "wdt"
        while proc.poll() is None:
            time.sleep(0.1)
            try:
                timeout = int(wdt.read_text() or 0) / 1000
                age = time.time() - wdt.stat().st_mtime
            except (OSError, ValueError):
                continue
            if timeout and age > timeout + 0.3:
                self.watchdog_fired = True
                proc.kill()
                return

    # ---- the hardware

    def _write_hardware(self):
        path = self.host / "hardware.json"
        tmp = path.with_suffix(".new")
        tmp.write_text(json.dumps(self.hardware_state))
        # The fakes notice a change by its modification time, in whole seconds: make it move.
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        tmp.replace(path)

    def set_hardware(self, **parts):
        """Changes the hardware, e.g. wifi={...}, sd={...}, hang=True, reset_cause=3."""
        for key, value in parts.items():
            if isinstance(value, dict) and isinstance(self.hardware_state.get(key), dict):
                self.hardware_state[key] = dict(self.hardware_state[key], **value)
            else:
                self.hardware_state[key] = value
        self._write_hardware()

    def events(self):
        try:
            return (self.host / "events.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_event(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while not any(text in e for e in self.events()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def info(self):
        return self.request("info")


__all__ = ["FakeEsp32", "compile_fakes", "make_fat_image", "free_port"]
