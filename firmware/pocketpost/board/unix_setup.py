# The emulated board's start-up (board/unix.py): its command line, and its flash and SD images
# made, formatted and mounted. Imported for start-up only and unloaded after it, so its code
# does not stay in the heap while the board serves.
import os
import sys

from micropython import const

from .unix import FLASH_MOUNT, SD_MOUNT, FileBlockDevice

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
    # Test hook: the boot check of the mail store runs with only this many octets of heap free.
    "--debug-boot-hold": "boot_hold",
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


def options_from_argv(argv=None):
    """The board's options from its command line (SystemExit with the usage when wrong)."""
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
    return options


def configure(board, options):
    """Sets the board's data folder, image sizes and configuration overrides from `options`."""
    board.data = options["data"]
    board.sd_size = parse_size(options.get("sd_size", "64M"))
    board.flash_size = parse_size(options.get("flash_size", "2M"))
    for key in _OVERRIDES:
        if key in options:
            value = options[key]
            if key.endswith("_port"):
                value = int(value)
            elif key == "domains":
                value = [d.strip().lower() for d in value.split(",") if d.strip()]
            board.overrides[key] = value
    if "boot_hold" in options:
        board.boot_hold = int(options["boot_hold"])
    board.sd_image = board.data + "/sd.img"
    board.flash_image = board.data + "/flash.img"


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


def mount_flash(board, log):
    """Mounts the internal flash image (made and formatted when new); returns its path."""
    if not _exists(board.data):
        os.mkdir(board.data)
    fresh = not _exists(board.flash_image)
    if fresh:
        _create_image(board.flash_image, board.flash_size)
    device = FileBlockDevice(board.flash_image, _LFS_BLOCK)
    if fresh:
        os.VfsLfs2.mkfs(device)
        log.info("board", "formatted the flash image {}".format(board.flash_image))
    os.mount(os.VfsLfs2(device), FLASH_MOUNT)
    board.mounted.append(FLASH_MOUNT)
    return FLASH_MOUNT


def mount_sd(board, log):
    """Mounts the SD card image (made and formatted when new); returns its path, or None when
    it cannot be used."""
    try:
        fresh = not _exists(board.sd_image)
        if fresh:
            _create_image(board.sd_image, board.sd_size)
        device = FileBlockDevice(board.sd_image, _FAT_BLOCK)
        if fresh:
            os.VfsFat.mkfs(device)
            log.info("board", "formatted the SD image {} ({} octets)".format(board.sd_image, board.sd_size))
        os.mount(os.VfsFat(device), SD_MOUNT)
    except OSError as e:
        board.storage_state = "error {}".format(e)
        log.exception("board", "cannot mount the SD image {}".format(board.sd_image), e)
        return None
    board.mounted.append(SD_MOUNT)
    board.storage_state = "ok"
    return SD_MOUNT
