"""Direct access to an emulated board's SD image (and its flash image), through MicroPython's
own FAT and LittleFS drivers (the firmware's FileBlockDevice), for tests that set up or inspect
what is on them while the firmware is stopped."""

import subprocess
import textwrap

from pocketpost_host import firmware

_PREAMBLE = """
import os, sys
sys.path.insert(0, {app!r})
from pocketpost.board.unix import FileBlockDevice
os.mount({vfs}(FileBlockDevice({image!r}, {block})), {mount!r})
def tree(path={mount!r}):
    out = []
    for name, kind, *_ in os.ilistdir(path):
        child = path + "/" + name
        out.append(child)
        if kind == 0x4000:
            out.extend(tree(child))
    return out
def read(path):
    with open(path, "rb") as f:
        return f.read()
def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
"""


def run(app_dir, image, code, flash=False):
    """Runs MicroPython `code` with the SD image mounted at /sd, or with `flash` the flash image
    (LittleFS) at /flash (helpers: tree, read, write); returns what it printed."""
    vfs, block, mount = ("os.VfsLfs2", 4096, "/flash") if flash else ("os.VfsFat", 512, "/sd")
    script = _PREAMBLE.format(app=str(app_dir), image=str(image), vfs=vfs, block=block, mount=mount)
    script += textwrap.dedent(code) + "\nos.umount({!r})\n".format(mount)
    result = subprocess.run([firmware.find_micropython(), "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
