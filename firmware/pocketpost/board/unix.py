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

SD_MOUNT = "/sd"
FLASH_MOUNT = "/flash"
# Exit codes the simulator acts on: it starts the firmware again after a reboot or a crash.
EXIT_STOPPED = const(0)
EXIT_REBOOT = const(75)
EXIT_CRASH = const(70)
_FAT_BLOCK = const(512)
_LFS_BLOCK = const(4096)

_OPTIONS = {
    "--data": "data",
    "--bind": "bind",
    "--pop3-port": "pop3_port",
    "--smtp-port": "smtp_port",
    "--pop3s-port": "pop3s_port",
    "--smtps-port": "smtps_port",
    "--submission-port": "submission_port",
    "--domain": "domains",
    "--hostname": "hostname",
    "--sd-size": "sd_size",
    "--flash-size": "flash_size",
}
# Options that become configuration overrides: the simulator's command line defines its network.
_OVERRIDES = ("bind", "pop3_port", "smtp_port", "pop3s_port", "smtps_port", "submission_port", "domains", "hostname")


def parse_size(text):
    """Octets from "64M", "512K", "2G" or a plain number."""
    factor = 1
    unit = text[-1:].upper()
    if unit in ("K", "M", "G"):
        factor = 1 << (10 * "KMG".index(unit) + 10)
        text = text[:-1]
    if not text.isdigit():
        raise ValueError("bad size " + text)
    return int(text) * factor


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


def _create_image(path, size):
    with open(path, "wb") as f:
        f.seek(size - 1)
        f.write(b"\x00")


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class UnixBoard:
    name = "unix"

    def __init__(self, options):
        self.data = options["data"]
        self.sd_size = parse_size(options.get("sd_size", "64M"))
        self.flash_size = parse_size(options.get("flash_size", "2M"))
        self.overrides = {}
        for key in _OVERRIDES:
            if key in options:
                value = options[key]
                if key.endswith("_port"):
                    value = int(value)
                elif key == "domains":
                    value = [d.strip().lower() for d in value.split(",") if d.strip()]
                self.overrides[key] = value
        self.sd_image = self.data + "/sd.img"
        self.flash_image = self.data + "/flash.img"
        self.storage_state = "not mounted"
        self.mounted = []
        self.defaults = {}  # settings whose default this board changes: none
        self.alive = None  # the watchdog's file, open while serving

    @classmethod
    def from_argv(cls, argv=None):
        argv = sys.argv[1:] if argv is None else argv
        options = {}
        i = 0
        while i < len(argv):
            key = _OPTIONS.get(argv[i])
            if key is None or i + 1 >= len(argv):
                raise SystemExit("usage: main.py --data DIR " + " ".join("[{} X]".format(o) for o in _OPTIONS if o != "--data"))
            options[key] = argv[i + 1]
            i += 2
        if "data" not in options:
            raise SystemExit("--data DIR is required")
        return cls(options)

    # ---- storage

    def mount_flash(self, log):
        """Mounts the internal flash (config and users); returns its path."""
        if not _exists(self.data):
            os.mkdir(self.data)
        fresh = not _exists(self.flash_image)
        if fresh:
            _create_image(self.flash_image, self.flash_size)
        device = FileBlockDevice(self.flash_image, _LFS_BLOCK)
        if fresh:
            os.VfsLfs2.mkfs(device)
            log.info("board", "formatted the flash image {}".format(self.flash_image))
        os.mount(os.VfsLfs2(device), FLASH_MOUNT)
        self.mounted.append(FLASH_MOUNT)
        return FLASH_MOUNT

    def mount_sd(self, log):
        """Mounts the SD card; returns its path, or None when it cannot be used."""
        try:
            fresh = not _exists(self.sd_image)
            if fresh:
                _create_image(self.sd_image, self.sd_size)
            device = FileBlockDevice(self.sd_image, _FAT_BLOCK)
            if fresh:
                os.VfsFat.mkfs(device)
                log.info("board", "formatted the SD image {} ({} octets)".format(self.sd_image, self.sd_size))
            os.mount(os.VfsFat(device), SD_MOUNT)
        except OSError as e:
            self.storage_state = "error {}".format(e)
            log.exception("board", "cannot mount the SD image {}".format(self.sd_image), e)
            return None
        self.mounted.append(SD_MOUNT)
        self.storage_state = "ok"
        return SD_MOUNT

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
