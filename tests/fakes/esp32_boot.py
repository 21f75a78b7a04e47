# The start of an ESP32 board, in the unix port: what MicroPython's _boot.py does (mount the
# LittleFS "vfs" partition at "/") with a built flash image, then /main.py from it, with the fake
# hardware modules of this folder in place of machine, network, ntptime, esp32 and neopixel.
#
#   MICROPYPATH=tests/fakes micropython -X heapsize=N tests/fakes/esp32_boot.py HOSTDIR
#
# HOSTDIR holds flash.img (the filesystem partition), hardware.json and the card's image; it is
# mounted at /host for the fakes.
import os
import sys

import _hardware  # noqa: F401
import esp32  # noqa: F401
import machine  # noqa: F401
import neopixel  # noqa: F401
import network  # noqa: F401
import ntptime  # noqa: F401

_BLOCK = 4096


class _Partition:
    """The vfs partition: what esp32.Partition gives _boot.py, over the image file. Not the
    firmware's FileBlockDevice: that lives inside the image this mounts."""

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


host = sys.argv[1]
flash = _Partition(host + "/flash.img")
os.umount("/")
os.mount(os.VfsLfs2(flash), "/")
os.mount(os.VfsPosix(host), _hardware.HOST)
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
sys.argv[:] = []
del flash, host
exec(open("/main.py").read(), {"__name__": "__main__"})
