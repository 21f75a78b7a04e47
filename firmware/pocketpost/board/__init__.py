# The board layer: everything that differs between boards (storage, network, console, reset).
# Only this package imports machine, network or esp32.


def open_board():
    """The board this firmware runs on."""
    try:
        import esp32  # noqa: F401  (only the ESP32 port has it)
    except ImportError:
        from .unix import UnixBoard

        return UnixBoard.from_argv()
    raise OSError("the ESP32 board layer is not part of this build")
