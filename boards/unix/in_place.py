# The unix board with its code in place (`pocketpost sim --code-in-place`): the firmware's
# modules run from a read-only image (a ROMFS, MicroPython's VfsRom), as a frozen or ROMFS build
# runs them from an ESP32's flash, instead of being loaded into the heap.
#
#   micropython -X heapsize=LARGER in_place.py --image FILE --pool OCTETS MAIN.py BOARD-OPTIONS
#
# The unix port has no flash to map, so the image is read into the heap (in place all the same:
# the .mpy files' bytecode and constants are used where they lie in it) and the heap is made
# larger by what the image takes: a block as large as that is then held too, so that the
# firmware gets the heap a start without the image has (OCTETS, what gc reports as free + used
# at such a start), less what this script keeps (its mount and path entries: measured 1,088
# octets on 64-bit, 816 on 32-bit), and its measures compare.
import gc
import sys
import vfs


def _run():
    argv = sys.argv
    if len(argv) < 6 or argv[1] != "--image" or argv[3] != "--pool":
        raise SystemExit("usage: in_place.py --image FILE --pool OCTETS MAIN.py BOARD-OPTIONS")
    image_path, pool, main = argv[2], int(argv[4]), argv[5]
    del argv[:5]  # the firmware's own command line: MAIN.py BOARD-OPTIONS
    gc.collect()
    before = gc.mem_alloc()
    with open(image_path, "rb") as f:
        image = f.read()
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(0, "/rom")
    gc.collect()
    beyond = gc.mem_free() + gc.mem_alloc() - pool  # what the image and the held block take
    held = bytearray(max(0, beyond - (gc.mem_alloc() - before) - 64))
    gc.collect()
    rest = beyond - (gc.mem_alloc() - before)  # (the block's header, the rounding to blocks)
    if rest > 64:
        held = (held, bytearray(rest - 64))
    with open(main) as f:
        source = f.read()
    return image, held, compile(source, main, "exec")


_kept = _run()  # the image and the held block, for as long as the firmware runs
exec(_kept[2], {"__name__": "__main__"})
