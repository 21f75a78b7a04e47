# A fake of the esp32 module (docs.micropython.org: esp32): its presence is how the firmware
# knows it runs on an ESP32; idf_heap_info() for the board's info.
HEAP_DATA = 4
HEAP_EXEC = 1


def idf_heap_info(capabilities):
    # (total, free, largest free block, minimum free ever) per heap region, as on a board.
    return [(240000, 180000, 110000, 170000), (30000, 20000, 20000, 19000)]
