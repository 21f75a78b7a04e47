# The emulated board: MicroPython's unix port. The SD card is a FAT image file mounted with
# os.VfsFat (the FatFS code machine.SDCard uses on the ESP32), the internal flash a LittleFS v2
# image (what MicroPython's ESP32 port formats its flash with), the console stdin/stdout. Its
# watchdog: while serving, the server's once-a-second task (server.reap_idle) rewrites DATA/alive;
# the simulator resets a board whose file stops changing, as an ESP32's watchdog timer does.
#
#   micropython -X heapsize=144k firmware/main.py --data DIR [--bind ADDR] [--pop3-port N]
#       [--smtp-port N] [--pop3s-port N] [--smtps-port N] [--submission-port N] [--domain D]
#       [--sd-size SIZE] [--flash-size SIZE]      (a port of 0 is off)
import asyncio
import os
import socket
import sys

from micropython import const

from .. import unload

SD_MOUNT = "/sd"
FLASH_MOUNT = "/flash"
# Exit codes the simulator acts on: it starts the firmware again after a reboot or a crash.
EXIT_STOPPED = const(0)
EXIT_REBOOT = const(75)
EXIT_CRASH = const(70)


class FileBlockDevice:
    """A block device over an image file, with the extended interface (offsets, erase) that
    os.VfsLfs2 uses and the simple one os.VfsFat uses."""

    def __init__(self, path, block_size):
        self.file = open(path, "r+b")
        self.block_size = block_size
        self.file.seek(0, 2)
        self.blocks = self.file.tell() // block_size

    def readblocks(self, block, buf, offset=0):
        self.file.seek(block * self.block_size + offset)
        self.file.readinto(buf)

    def writeblocks(self, block, buf, offset=0):
        self.file.seek(block * self.block_size + (offset or 0))
        self.file.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase: nothing to do for a file
            return 0
        return None


class UnixBoard:
    name = "unix"
    # The console's test hooks (debug.hold) exist on the emulated board only.
    debug_requests = True

    def __init__(self, options):
        from . import unix_setup

        self.overrides = {}
        self.storage_state = "not mounted"
        self.mounted = []
        self.defaults = {}  # settings whose default this board changes: none
        self.alive = None  # the watchdog's file, open while serving
        self.boot_hold = None  # see unix_setup: --debug-boot-hold
        unix_setup.configure(self, options)

    @classmethod
    def from_argv(cls, argv=None):
        from . import unix_setup

        return cls(unix_setup.options_from_argv(argv))

    # ---- storage (made and mounted by unix_setup, forgotten once the board has started)

    def mount_flash(self, log):
        """Mounts the internal flash (config and users); returns its path."""
        return _setup().mount_flash(self, log)

    def mount_sd(self, log):
        """Mounts the SD card; returns its path, or None when it cannot be used."""
        try:
            return _setup().mount_sd(self, log)
        finally:
            # The SD card is mounted last (boot.py): start-up code is done with.
            unload("pocketpost.board.unix_setup")

    def unmount(self):
        """Unmounts everything mounted, so FatFS writes back what it holds."""
        while self.mounted:
            try:
                os.umount(self.mounted.pop())
            except OSError:
                pass

    # ---- network and console

    async def network_up(self, config, log):
        """The address to listen on: the unix board has its sockets straight away."""
        try:
            # Kept open: each feed is one write, nothing allocated (unix-port files are unbuffered).
            self.alive = open(self.data + "/alive", "wb")
        except OSError:
            self.alive = None
        return config["bind"]

    def beat(self):
        """Called once a second by the event loop (a loop blocked by a hung task stops calling):
        feeds the watchdog."""
        if self.alive is not None:
            try:
                self.alive.seek(0)
                self.alive.write(b"fed\n")
            except OSError:
                pass  # the data folder went away: nothing to tell the simulator

    @staticmethod
    def peer_address(stream):
        raw = stream.get_extra_info("peername")
        try:
            family, address, _ = socket.sockaddr(raw)
            return socket.inet_ntop(family, address)
        except (TypeError, ValueError, OSError):
            return str(raw)

    @staticmethod
    def console_stream():
        return asyncio.StreamReader(sys.stdin.buffer)

    # The console output: log lines and console replies.
    console_out = sys.stdout

    def info(self):
        return {"sd_image": self.sd_image, "flash_image": self.flash_image}

    # ---- reset

    def reset(self, reason):
        """What a board does on machine.reset(): the simulator starts the firmware again."""
        sys.exit(EXIT_REBOOT if reason == "reboot" else EXIT_CRASH)


def _setup():
    from . import unix_setup

    return unix_setup
