"""`pocketpost deploy`: the development loop on a board that already runs MicroPython.

Over the board's console with mpremote's serial transport (as a library): Ctrl-C stops the
firmware (it unmounts its card) and the raw REPL is entered without a soft reset (mpremote's
`resume`), the SHA-256 of every file the app has on the board is read in one go, only the
compiled files that differ are written, compiled modules whose source is gone are removed, and
Ctrl-D at the friendly REPL soft-resets the board, which starts the firmware again. The firmware
is then greeted on its console until it answers.

Files are written relative to the board's current folder: "/" on an ESP32 (the flash
filesystem), the app's folder on the emulated board (pocketpost sim's DATA/app).
"""

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import boards, firmware
from .errors import PocketpostError, PortError
from .flash import HELLO_TIMEOUT, wait_for_console
from .transport import detect_port

# The raw REPL's reply to this is one line of JSON: the SHA-256 of each listed file that exists
# on the board, the compiled modules there, and the .mpy version the board imports.
_SURVEY = """\
import sys, os, hashlib, binascii, json
def _h(p):
    try:
        f = open(p, "rb")
    except OSError:
        return None
    d = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        d.update(memoryview(b)[:n])
    f.close()
    return binascii.hexlify(d.digest()).decode()
def _walk(p):
    out = []
    try:
        for e in os.ilistdir(p):
            q = p + "/" + e[0]
            out += _walk(q) if e[1] == 0x4000 else [q]
    except OSError:
        pass
    return out
print(json.dumps({"hashes": {p: _h(p) for p in %s}, "present": _walk("pocketpost"), "mpy": getattr(sys.implementation, "_mpy", 0) & 0x3ff, "platform": sys.platform}))
"""
# mpy v6.3: what mpy-cross writes (firmware.MPY_VERSION/MPY_SUBVERSION), as sys.implementation._mpy
# reports it (low byte the version, the next two bits the sub-version).
_BOARD_MPY = firmware.MPY_VERSION | (firmware.MPY_SUBVERSION << 8)


@dataclass
class DeployResult:
    port: str
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    firmware: str | None = None


def local_files(board_name: str | None) -> dict[str, bytes]:
    """What deploy keeps in step on the board: main.py and the compiled app, plus board.json
    when a board is named (the ESP32 layer reads it)."""
    files = {}
    with tempfile.TemporaryDirectory(prefix="pocketpost-deploy-") as tmp:
        firmware.compile_tree(firmware.source_dir(), Path(tmp))
        for mpy in sorted(Path(tmp).rglob("*.mpy")):
            files[mpy.relative_to(tmp).as_posix()] = mpy.read_bytes()
    files["main.py"] = (firmware.source_dir() / "main.py").read_bytes()
    if board_name is not None:
        files["board.json"] = boards.firmware_definition(boards.load(board_name))
    return files


def for_platform(files: dict[str, bytes], platform: str) -> dict[str, bytes]:
    """`files` without the board layer a board of `platform` (its sys.platform) cannot use: an
    ESP32 gets no unix layer (as `build` leaves it out); the unix port keeps both, since the
    simulator's app folder is compiled from the whole tree."""
    if platform == "esp32":
        return {path: data for path, data in files.items() if not path.startswith("pocketpost/board/unix")}
    return files


def _open(port: str):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        return SerialTransport(port, baudrate=115200)
    except TransportError:
        raise PortError(f"cannot open {port} (is it there, and not open in another program?)") from None


def deploy(port: str | None = None, board_name: str | None = None, emit=print,
           hello_timeout: float = HELLO_TIMEOUT) -> DeployResult:
    """Copies the changed compiled files onto the board on `port` and soft-resets it."""
    from mpremote.transport import TransportError

    files = local_files(board_name)
    if port is None:
        port = detect_port(boards.load(board_name).usb_ids if board_name else None)
    result = DeployResult(port)
    transport = _open(port)
    try:
        try:
            transport.enter_raw_repl(soft_reset=False)  # mpremote's `resume`: no soft reset first
        except TransportError as e:
            raise PocketpostError(f"no MicroPython REPL on {port}: {e}") from None
        survey = json.loads(transport.exec(_SURVEY % repr(sorted(files))).decode())
        if survey["mpy"] != _BOARD_MPY:
            version = f"{survey['mpy'] & 0xff}.{survey['mpy'] >> 8}"
            raise PocketpostError(
                f"the board imports .mpy v{version}; pocketpost's are v{firmware.MPY_VERSION}.{firmware.MPY_SUBVERSION} "
                f"(MicroPython {'.'.join(map(str, firmware.MIN_MICROPYTHON))} or newer)"
            )
        files = for_platform(files, survey.get("platform", ""))  # a stale unix layer is removed below
        folders = set()
        for path in sorted(files):
            data = files[path]
            if survey["hashes"].get(path) == hashlib.sha256(data).hexdigest():
                result.unchanged += 1
                continue
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = "/".join(parts[:i])
                if folder not in folders:
                    folders.add(folder)
                    transport.exec(f"import os\ntry:\n os.mkdir({folder!r})\nexcept OSError:\n pass")
            transport.fs_writefile(path, data)
            result.written.append(path)
            emit(f"wrote {path} ({len(data)} octets)")
        for path in survey["present"]:
            if path.endswith(".mpy") and path not in files:
                transport.fs_rmfile(path)
                result.removed.append(path)
                emit(f"removed {path}")
        transport.exit_raw_repl()
        transport.serial.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reset, main.py runs
    except TransportError as e:
        raise PocketpostError(f"deploy to {port} failed: {e}") from None
    except OSError as e:
        raise PortError(f"{port}: {e}") from None
    finally:
        transport.close()
    emit(f"{len(result.written)} written, {len(result.removed)} removed, {result.unchanged} unchanged; soft reset")
    hello, _ = wait_for_console(port, hello_timeout, info=False)
    result.firmware = hello.get("firmware")
    return result

