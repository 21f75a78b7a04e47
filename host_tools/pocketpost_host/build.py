"""`pocketpost build`: the firmware as a board's flash holds it.

- The app compiled with mpy-cross (bytecode, which every MicroPython 1.23+ imports whatever the
  chip), the board definition and a default config, in a LittleFS v2 image the size of the
  board's filesystem partition: what MicroPython's _boot.py mounts at "/".
- With a base MicroPython firmware (`--firmware BASE.bin`), its partition table is read and must
  put the filesystem partition where the board definition does; the two are merged with
  esptool's merge-bin into one image that a single `write-flash` at the firmware's offset makes
  a working board.
- A MicroPython manifest.py that freezes the app into a firmware of one's own (frozen bytecode
  runs from flash, leaving the heap the imported .mpy files would take): see docs/boards.md.
- For the unix board: rom/main.py, which boots the image in the unix port as a board would.

The same inputs give the same bytes: files go into the image in sorted order, nothing records a
time or an absolute path.
"""

import hashlib
import json
import re
import shutil
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, boards, firmware
from .errors import PocketpostError

# The oldest MicroPython that imports the .mpy files mpy-cross writes (v6.3).
MIN_MICROPYTHON = firmware.MIN_MICROPYTHON
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
_PARTITION_MAGIC = b"\xaa\x50"
_PARTITION_MD5 = b"\xeb\xeb"
_IMAGE_MAGIC = 0xE9
_APP_DESC_MAGIC = 0xABCD5432
# esptool's chip names by the chip id in an ESP image's extended header.
CHIP_IDS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6", 16: "esp32h2"}
# LittleFS on-disk version 2.0: every MicroPython since littlefs v2 mounts it (littlefs 2.6
# and later also read and upgrade it; 2.1 images are refused by older ones).
LFS_DISK_VERSION = 0x00020000

UNIX_LOADER = '''\
# Written by pocketpost build: boots a built flash image in MicroPython's unix port, as a board
# does (an ESP32's _boot.py mounts the vfs partition, then main.py runs from it):
#   cp {image} DATA/flash.img
#   micropython -X heapsize={heap} rom/main.py --data DATA [--bind ADDR] [--pop3-port N] ...
import os
import sys

_BLOCK = 4096


# The firmware's FileBlockDevice lives inside the image this mounts, so the loader brings its own.
class _Image:
    def __init__(self, path):
        self.file = open(path, "r+b")
        self.file.seek(0, 2)
        self.blocks = self.file.tell() // _BLOCK

    def readblocks(self, block, buf, offset=0):
        self.file.seek(block * _BLOCK + offset)
        self.file.readinto(buf)

    def writeblocks(self, block, buf, offset=0):
        self.file.seek(block * _BLOCK + (offset or 0))
        self.file.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return _BLOCK
        if op == 6:
            return 0
        return None


_data = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else "."
os.mount(os.VfsLfs2(_Image(_data + "/flash.img")), "/flash")
sys.path.insert(0, "/flash")
from pocketpost.board.unix import FLASH_MOUNT, UnixBoard  # noqa: E402


def _mounted(board, log):
    """The board's mount_flash: the flash is mounted already, as on a board after _boot.py."""
    board.mounted.append(FLASH_MOUNT)
    return FLASH_MOUNT


UnixBoard.mount_flash = _mounted
del _data, UnixBoard
exec(open("/flash/main.py").read(), {{"__name__": "__main__"}})
'''


@dataclass
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0


@dataclass
class BaseFirmware:
    """What a MicroPython firmware image says about itself."""

    path: Path
    data: bytes
    chip: str
    partitions: list[Partition]
    version: str | None  # "v1.24.1", from the app's description
    project: str | None


@dataclass
class BuildResult:
    board: str
    out: Path
    fs_image: Path
    fs_offset: int | None
    fs_size: int
    files: dict[str, str]  # path in the image -> sha256
    merged: Path | None = None
    write_offset: int | None = None  # where the merged image goes in flash
    base: dict | None = None
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """build.json: what was built, for `pocketpost flash` and for people."""
        out = {
            "pocketpost": __version__,
            "board": self.board,
            "filesystem": {
                "image": self.fs_image.name,
                "offset": None if self.fs_offset is None else hex(self.fs_offset),
                "size": self.fs_size,
                "sha256": _sha256(self.fs_image.read_bytes()),
            },
            "files": self.files,
        }
        if self.merged is not None:
            out["merged"] = {
                "image": self.merged.name,
                "offset": hex(self.write_offset),
                "size": self.merged.stat().st_size,
                "sha256": _sha256(self.merged.read_bytes()),
            }
            out["base_firmware"] = self.base
        return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the app


def app_files(board: boards.Board, frozen: bool = False, config: dict | None = None) -> dict[str, bytes]:
    """Path in the image -> contents: /main.py, the compiled app (not when `frozen`: the
    firmware has it), /board.json and /config.json."""
    other_layer = "unix" if not board.emulated else "esp32"
    files = {}
    if not frozen:
        with tempfile.TemporaryDirectory(prefix="pocketpost-build-") as tmp:
            firmware.compile_tree(firmware.source_dir(), Path(tmp))
            for mpy in sorted(Path(tmp).rglob("*.mpy")):
                rel = mpy.relative_to(tmp).as_posix()
                if not rel.startswith(f"pocketpost/board/{other_layer}"):  # unix.mpy, unix_setup.mpy
                    files[rel] = mpy.read_bytes()
    files["main.py"] = (firmware.source_dir() / "main.py").read_bytes()
    files["board.json"] = boards.firmware_definition(board)
    files["config.json"] = json.dumps(config or {}, sort_keys=True).encode()
    return dict(sorted(files.items()))


def littlefs_image(files: dict[str, bytes], size: int, block_size: int = boards.FS_BLOCK_SIZE) -> bytes:
    """A LittleFS v2 image of `size` octets holding `files`, as MicroPython's VfsLfs2 mounts it
    (4096-byte blocks on the ESP32 port); the same files give the same bytes."""
    from littlefs import LittleFS, LittleFSError

    if size % block_size:
        raise PocketpostError(f"the filesystem size {size} is not a multiple of {block_size}")
    fs = LittleFS(
        block_size=block_size, block_count=size // block_size, read_size=32, prog_size=32,
        lookahead_size=32, name_max=255, disk_version=LFS_DISK_VERSION,
    )
    try:
        for path in sorted(files):
            parent = path.rpartition("/")[0]
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(files[path])
    except LittleFSError as e:
        total = sum(len(d) for d in files.values())
        raise PocketpostError(f"the app ({total} octets) does not fit a {size}-octet filesystem: {e}") from None
    return bytes(fs.context.buffer)


def manifest_text(board: boards.Board) -> str:
    """manifest.py for a MicroPython build that freezes the app (next to a copy of its source)."""
    mp = board.micropython
    return (
        f"# pocketpost {__version__} for board {board.name}, written by pocketpost build.\n"
        "# Freezes the app into a MicroPython firmware of your own (docs/boards.md):\n"
        f"#   make -C ports/{mp.get('port', 'esp32')} BOARD={mp.get('board', '')}"
        + (f" BOARD_VARIANT={mp['variant']}" if mp.get("variant") else "")
        + " FROZEN_MANIFEST=$PWD/manifest.py\n"
        "# then `pocketpost build --board NAME --frozen --firmware` that firmware: the filesystem\n"
        "# holds only main.py, board.json and config.json.\n"
        'include("$(PORT_DIR)/boards/manifest.py")\n'
        f'package("pocketpost", opt={firmware.OPT})\n'
    )


def _write_frozen_source(board: boards.Board, folder: Path):
    """The app's source beside manifest.py, without the other board's layer."""
    if folder.exists():
        shutil.rmtree(folder)
    src = firmware.source_dir() / "pocketpost"
    other = "unix" if not board.emulated else "esp32"
    for py in sorted(src.rglob("*.py")):
        rel = py.relative_to(src)
        if rel.as_posix().startswith(f"board/{other}"):  # unix.py, unix_setup.py
            continue
        target = folder / "pocketpost" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(py.read_bytes())
    (folder / "manifest.py").write_text(manifest_text(board))


# ---- base firmware


def read_partition_table(data: bytes) -> list[Partition]:
    """The entries of an ESP-IDF partition table (the binary gen_esp32part.py writes: 32-octet
    entries, then an MD5 entry); raises PocketpostError when it is damaged."""
    entries = []
    digest_seen = False
    for pos in range(0, min(len(data), PARTITION_TABLE_SIZE), 32):
        entry = data[pos : pos + 32]
        if entry[:2] == _PARTITION_MAGIC:
            _, ptype, subtype, offset, size, label, flags = struct.unpack("<2sBBLL16sL", entry)
            entries.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype, offset, size, flags))
        elif entry[:2] == _PARTITION_MD5:
            if hashlib.md5(data[:pos]).digest() != entry[16:32]:
                raise PocketpostError("the partition table's MD5 sum does not match: the table is damaged")
            digest_seen = True
            break
        else:
            break
    if not entries:
        raise PocketpostError("no partition table at 0x8000")
    if not digest_seen:
        raise PocketpostError("the partition table has no MD5 entry")
    return entries


def _app_description(app: bytes) -> tuple[str | None, str | None]:
    """(version, project name) from an app image's esp_app_desc_t (at the start of its first
    segment), or (None, None)."""
    if len(app) < 24 + 8 + 80 or app[0] != _IMAGE_MAGIC:
        return None, None
    desc = app[32:]
    if struct.unpack_from("<L", desc)[0] != _APP_DESC_MAGIC:
        return None, None
    text = lambda raw: raw.split(b"\0")[0].decode("ascii", "replace")  # noqa: E731
    return text(desc[16:48]), text(desc[48:80])


def read_base_firmware(path: Path, board: boards.Board) -> BaseFirmware:
    """Reads a MicroPython firmware image (the .bin from micropython.org, which starts with the
    bootloader and goes at the board's firmware offset) and checks it against the board."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PocketpostError(f"firmware file {path} does not exist") from None
    except OSError as e:
        raise PocketpostError(f"cannot read firmware file {path}: {e.strerror}") from None
    base = board.firmware_offset
    if len(data) < 24 or data[0] != _IMAGE_MAGIC:
        raise PocketpostError(f"{path} is not an ESP32 firmware image (no bootloader image at its start)")
    chip_id = struct.unpack_from("<H", data, 12)[0]
    chip = CHIP_IDS.get(chip_id, f"chip id {chip_id}")
    if chip != board.chip:
        raise PocketpostError(f"{path} is firmware for {chip}; board {board.name} has an {board.chip}")
    table_at = PARTITION_TABLE_OFFSET - base
    if len(data) < table_at + 32:
        raise PocketpostError(f"{path} ends before the partition table at 0x{PARTITION_TABLE_OFFSET:x}")
    try:
        partitions = read_partition_table(data[table_at : table_at + PARTITION_TABLE_SIZE])
    except PocketpostError as e:
        raise PocketpostError(f"{path}: {e}") from None
    version = project = None
    apps = [p for p in partitions if p.type == 0]
    if apps:
        start = apps[0].offset - base
        version, project = _app_description(data[start : start + 256])
    return BaseFirmware(Path(path), data, chip, partitions, version, project)


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(x or 0) for x in match.groups()) if match else None


def check_base_firmware(fw: BaseFirmware, board: boards.Board) -> list[str]:
    """Refuses a firmware whose filesystem partition differs from the board definition's, or a
    MicroPython too old for the app; returns notes (another version than the definition's)."""
    notes = []
    if fw.project is not None and fw.project != "micropython":
        raise PocketpostError(f"{fw.path} is not MicroPython (its app is {fw.project!r})")
    version = _parse_version(fw.version)
    if version is not None and version[:2] < MIN_MICROPYTHON:
        raise PocketpostError(
            f"{fw.path} is MicroPython {fw.version}; pocketpost's .mpy files need "
            f"{'.'.join(map(str, MIN_MICROPYTHON))} or newer"
        )
    if version is not None and version != board.version:
        notes.append(
            f"{fw.path.name} is MicroPython {fw.version}; board {board.name} was written for "
            f"v{'.'.join(map(str, board.version))} (its partition layout matches)"
        )
    matching = [p for p in fw.partitions if p.label == board.fs_partition]
    if not matching:
        labels = ", ".join(p.label for p in fw.partitions)
        raise PocketpostError(f"{fw.path} has no {board.fs_partition!r} partition (it has {labels})")
    part = matching[0]
    if (part.offset, part.size) != (board.fs_offset, board.fs_size):
        raise PocketpostError(
            f"{fw.path}: partition {part.label!r} is at 0x{part.offset:x}, 0x{part.size:x} octets; board "
            f"{board.name} expects 0x{board.fs_offset:x}, 0x{board.fs_size:x} (the firmware named in "
            f"boards/{board.name}/README.md has that layout)"
        )
    if board.firmware_offset + len(fw.data) > board.fs_offset:
        raise PocketpostError(
            f"{fw.path} reaches into the filesystem partition at 0x{board.fs_offset:x} "
            "(is it already a merged image?)"
        )
    return notes


@contextmanager
def esptool_output(emit):
    """Sends what esptool prints to `emit` (one line each) while the block runs."""
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    class Logger(TemplateLogger):
        def print(self, *args, **kwargs):
            text = " ".join(str(a) for a in args).strip()
            if text:
                emit(text)

        def note(self, message):
            emit(f"note: {message}")

        def warning(self, message):
            emit(f"warning: {message}")

        def error(self, message):
            emit(f"error: {message}")

        def stage(self, finish=False):
            pass

        def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
            emit(("progress", cur_iter, total_iters))

        def set_verbosity(self, verbosity):
            pass

    saved = EspLog.instance
    log.set_logger(Logger())
    try:
        yield
    finally:
        EspLog.instance = saved


def merge(board: boards.Board, base: bytes, fs_image: bytes) -> bytes:
    """The base firmware and the filesystem image in one image that starts at the firmware's
    offset (esptool merge-bin: the gap between them is 0xFF, erased flash)."""
    from esptool.cmds import merge_bin

    with esptool_output(lambda line: None):
        return merge_bin(
            [(board.firmware_offset, base), (board.fs_offset, fs_image)], board.chip,
            target_offset=board.firmware_offset,
        )


# ---- the whole build


def default_out(board_name: str) -> Path:
    return Path("build") / board_name


def build(board, out: Path | None = None, base_firmware: Path | None = None, config: dict | None = None,
          frozen: bool = False) -> BuildResult:
    """Builds the images of `board` (a name or a boards.Board) into `out` (default
    build/<board>); with `base_firmware`, also the merged image. Returns what was made."""
    if isinstance(board, str):
        board = boards.load(board)
    if board.version[:2] < MIN_MICROPYTHON:
        raise PocketpostError(
            f"board {board.name} expects MicroPython {'.'.join(map(str, board.version))}; the app's .mpy "
            f"files need {'.'.join(map(str, MIN_MICROPYTHON))} or newer"
        )
    if base_firmware is not None and board.emulated:
        raise PocketpostError("the unix board has no firmware image to merge with (--firmware is for ESP32 boards)")
    out = Path(out) if out is not None else default_out(board.name)
    notes = []
    base = None
    if base_firmware is not None:
        base = read_base_firmware(base_firmware, board)  # before writing anything
        notes += check_base_firmware(base, board)
    files = app_files(board, frozen=frozen, config=config)
    image = littlefs_image(files, board.fs_size, board.fs_block_size)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"pocketpost-{board.name}"
        fs_path = out / f"{stem}-fs.bin"
        fs_path.write_bytes(image)
        result = BuildResult(
            board=board.name, out=out, fs_image=fs_path, fs_offset=board.fs_offset, fs_size=board.fs_size,
            files={path: _sha256(data) for path, data in files.items()}, notes=notes,
        )
        _write_frozen_source(board, out / "frozen")
        result.manifest = out / "frozen" / "manifest.py"
        if board.emulated:
            rom = out / "rom"
            rom.mkdir(exist_ok=True)
            (rom / "main.py").write_text(UNIX_LOADER.format(image=fs_path.name, heap=board.definition.get("heap", "144k")))
        if base is not None:
            merged = out / f"{stem}.bin"
            merged.write_bytes(merge(board, base.data, image))
            result.merged = merged
            result.write_offset = board.firmware_offset
            result.base = {"file": base.path.name, "sha256": _sha256(base.data), "micropython": base.version}
        else:
            (out / f"{stem}.bin").unlink(missing_ok=True)  # no stale merged image from an earlier build
        (out / "build.json").write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise PocketpostError(f"cannot write {e.filename or out}: {e.strerror}") from None
    return result


def parse_config_option(text: str) -> tuple[str, object]:
    """KEY=VALUE of --config, checked and converted as `pocketpost config set` does."""
    from .provision import convert_config_value

    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected KEY=VALUE")
    return key, convert_config_value(key, value)


def read_image_files(image: bytes, block_size: int = boards.FS_BLOCK_SIZE) -> dict[str, bytes]:
    """The files in a LittleFS image (for checks and tests)."""
    from littlefs import LittleFS

    fs = LittleFS(block_size=block_size, block_count=len(image) // block_size, mount=False)
    fs.context.buffer = bytearray(image)
    fs.mount()
    found = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = (root.rstrip("/") + "/" + name).lstrip("/")
            with fs.open(path, "rb") as f:
                found[path] = f.read()
    return found


def describe(result: BuildResult) -> list[str]:
    """Lines telling what was built and how to write it."""
    lines = [f"{result.fs_image}: LittleFS image, {result.fs_size} octets, {len(result.files)} files"]
    if result.merged is not None:
        lines.append(
            f"{result.merged}: base firmware + filesystem; write it with "
            f"`pocketpost flash --board {result.board} --firmware BASE.bin` (which builds it again) or "
            f"`esptool write-flash 0x{result.write_offset:x} {result.merged}`"
        )
    elif result.fs_offset is not None:
        lines.append(
            f"no --firmware: write the filesystem alone onto a board that runs the matching MicroPython "
            f"with `esptool write-flash 0x{result.fs_offset:x} {result.fs_image}`"
        )
    else:
        lines.append(f"boot it: cp {result.fs_image} DATA/flash.img; micropython {result.out / 'rom' / 'main.py'} --data DATA")
    if result.manifest is not None:
        lines.append(f"{result.manifest}: freezes the app into a MicroPython build of your own (docs/boards.md)")
    return lines + [f"note: {n}" for n in result.notes]

