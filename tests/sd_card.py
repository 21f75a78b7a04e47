"""Direct access to an emulated board's SD image, through MicroPython's own FAT driver (the
firmware's FileBlockDevice), for tests that set up or inspect what is on the card while the
firmware is stopped."""

import subprocess
import textwrap

from pocketpost_host import firmware

_PREAMBLE = """
import os, sys
sys.path.insert(0, {app!r})
from pocketpost.board.unix import FileBlockDevice
os.mount(os.VfsFat(FileBlockDevice({image!r}, 512)), "/sd")
def tree(path="/sd"):
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


def run(app_dir, image, code):
    """Runs MicroPython `code` with the image mounted at /sd (helpers: tree, read, write);
    returns what it printed."""
    script = _PREAMBLE.format(app=str(app_dir), image=str(image)) + textwrap.dedent(code) + '\nos.umount("/sd")\n'
    result = subprocess.run([firmware.find_micropython(), "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
