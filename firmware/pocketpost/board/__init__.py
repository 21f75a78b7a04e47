# The board layer: everything that differs between boards (storage, network, console, reset).
# Only this package imports machine, network or esp32.


def open_board():
    """The board this firmware runs on: the ESP32 layer where the esp32 module exists, else the
    emulated board (the unix port). Each imports only its own layer."""
    try:
        import esp32  # noqa: F401  (only the ESP32 port has it)
    except ImportError:
        from .unix import UnixBoard

        return UnixBoard.from_argv()
    from .esp32 import Esp32Board

    return Esp32Board.from_flash()
