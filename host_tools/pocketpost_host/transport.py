"""Opening the board's console: a serial device, the simulator's console link or any pyserial
URL (socket://, rfc2217://), opened exclusively; without a port, the one ESP32 USB serial
adapter plugged in."""

import errno

import serial
import serial.tools.list_ports

from .errors import PortBusy, PortError

# The console's speed on every pocketpost board (MicroPython's default UART0 / USB CDC speed).
BAUDRATE = 115200

# USB serial adapters found on ESP32 boards, and the ESP32's own USB: (VID, PID) -> name.
ESP32_USB_SERIAL = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x10C4, 0xEA70): "Silicon Labs CP2105",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D3): "WCH CH343",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT-X",
    (0x303A, 0x1001): "Espressif USB Serial/JTAG",
    (0x303A, 0x4001): "Espressif native USB (MicroPython)",
}


def known_usb_ids() -> dict:
    """The adapters above and those the board definitions name (boards/*/board.json)."""
    from .boards import all_usb_ids

    return {**all_usb_ids(), **ESP32_USB_SERIAL}


def describe_port(info, ids=None) -> str:
    """One line naming a port found by serial.tools.list_ports: device, VID:PID, description."""
    if info.vid is None or info.pid is None:
        return f"{info.device} (no USB ids)"
    name = (ids or ESP32_USB_SERIAL).get((info.vid, info.pid)) or info.description or "unknown adapter"
    return f"{info.device} ({info.vid:04X}:{info.pid:04X} {name})"


def detect_port(ids: dict | None = None) -> str:
    """The device of the one ESP32 USB serial adapter plugged in (`ids`: the (VID, PID) pairs
    to look for, by default every known one); raises PortError when there is none or more than
    one, listing what was found."""
    ids = ids or known_usb_ids()
    ports = sorted(serial.tools.list_ports.comports(), key=lambda p: p.device)
    boards = [p for p in ports if (p.vid, p.pid) in ids]
    if len(boards) == 1:
        return boards[0].device
    if boards:
        raise PortError(
            f"{len(boards)} ESP32 serial adapters found, choose one with --port: "
            + ", ".join(describe_port(p, ids) for p in boards)
        )
    found = ", ".join(describe_port(p, ids) for p in ports) or "no serial ports at all"
    raise PortError(f"no ESP32 serial adapter found (seen: {found}); plug the board in or give --port")


def open_port(url: str | None, timeout: float = 1.0):
    """Opens `url` (auto-detected when None) exclusively at BAUDRATE and returns the pyserial
    object; raises PortBusy when another program holds it, PortError for anything else."""
    if url is None:
        url = detect_port()
    try:
        return serial.serial_for_url(url, baudrate=BAUDRATE, timeout=timeout, exclusive=True)
    except ValueError as e:  # an unknown URL scheme or a bad setting in the URL
        raise PortError(f"cannot open {url}: {e}") from None
    except serial.SerialException as e:
        code = getattr(e, "errno", None)
        if code in (errno.EAGAIN, errno.EBUSY):
            raise PortBusy(
                f"port {url} is busy: another program has it open (a terminal, mpremote, another pocketpost?)"
            ) from None
        if code == errno.ENOENT:
            raise PortError(
                f"port {url} does not exist (is the board plugged in, or `pocketpost sim` running?)"
            ) from None
        if code == errno.EACCES:
            raise PortError(
                f"no permission to open {url} (on Linux, join the group that owns it, e.g. dialout)"
            ) from None
        if code == errno.ENOTTY or "Inappropriate ioctl" in str(e):
            raise PortError(f"{url} is not a serial port") from None
        raise PortError(f"cannot open {url}: {e}") from None
