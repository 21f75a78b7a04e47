# MicroPython (unix port): what the emulated SD card alone allocates for a transfer, so `make
# bench` can tell it apart from the firmware's own allocation. Runs the board's FileBlockDevice
# (pocketpost/board/unix.py, from the compiled firmware) under os.VfsFat, as the unix board does:
#
#   micropython -X heapsize=176k bench/fat_alloc.py APP_DIR IMAGE OCTETS
#
# - a write of OCTETS (and of ~2 KB) in 1,024-octet chunks after a 333-octet head (the firmware
#   writes the trace fields, then the DATA it reads in chunks: so the chunks do not start on sectors)
# - a read of the file back in 512-octet readinto (POP3's file scratch buffer)
# - direct calls of the block device's writeblocks/readblocks (what FatFS calls for every
#   sector), and how many of them the write and the read made
# Prints one JSON line. On an ESP32 machine.SDCard's methods are C; on the unix board they are
# Python. Nothing here allocates per chunk (no slices): what is counted is the file system's.
import gc
import json
import micropython
import os
import sys

sys.path.insert(0, sys.argv[1])
from pocketpost.board.unix import FileBlockDevice, _create_image  # noqa: E402

IMAGE = sys.argv[2]
OCTETS = int(sys.argv[3])
CALLS = 2000


class CountingDevice(FileBlockDevice):
    def __init__(self, path, block_size):
        super().__init__(path, block_size)
        self.calls = [0, 0]  # reads, writes

    def readblocks(self, block, buf, offset=0):
        self.calls[0] += 1
        FileBlockDevice.readblocks(self, block, buf, offset)

    def writeblocks(self, block, buf, offset=0):
        self.calls[1] += 1
        FileBlockDevice.writeblocks(self, block, buf, offset)


def transfer(path, head, chunk, scratch, chunks):
    """(octets allocated by the write, by the read)."""
    gc.collect()
    t0 = micropython.mem_total()
    f = open(path, "wb")
    f.write(head)
    for _ in range(chunks):
        f.write(chunk)
    f.close()
    t1 = micropython.mem_total()
    f = open(path, "rb")
    while f.readinto(scratch):
        pass
    f.close()
    t2 = micropython.mem_total()
    os.remove(path)
    return t1 - t0, t2 - t1


def main():
    _create_image(IMAGE, 64 * 1024 * 1024)
    plain = FileBlockDevice(IMAGE, 512)
    os.VfsFat.mkfs(plain)
    head = bytearray(333)
    chunk = bytearray(b"X" * 1022 + b"\r\n")
    scratch = bytearray(512)
    chunks = OCTETS // len(chunk)
    octets = len(head) + chunks * len(chunk)

    # The plain block device, as the board uses it: a 2 KB file and a big one, so the cost per
    # file (open, close, folder entry) and the cost per MB can be told apart.
    os.mount(os.VfsFat(plain), "/sd")
    transfer("/sd/warm", head, chunk, scratch, chunks)
    small_chunks = 2
    small_write, small_read = transfer("/sd/m0", head, chunk, scratch, small_chunks)
    write_alloc, read_alloc = transfer("/sd/m1", head, chunk, scratch, chunks)
    # The block device on its own: bytes allocated per call.
    block = bytearray(512)
    gc.collect()
    t0 = micropython.mem_total()
    for i in range(CALLS):
        plain.writeblocks(4000 + (i & 63), block)
    t1 = micropython.mem_total()
    for i in range(CALLS):
        plain.readblocks(4000 + (i & 63), block)
    t2 = micropython.mem_total()
    os.umount("/sd")

    # The same transfer counting the calls FatFS makes.
    counting = CountingDevice(IMAGE, 512)
    os.mount(os.VfsFat(counting), "/sd")
    counting.calls[0] = counting.calls[1] = 0
    f = open("/sd/m2", "wb")
    f.write(head)
    for _ in range(chunks):
        f.write(chunk)
    f.close()
    write_calls = counting.calls[:]
    counting.calls[0] = counting.calls[1] = 0
    f = open("/sd/m2", "rb")
    while f.readinto(scratch):
        pass
    f.close()
    read_calls = counting.calls[:]
    os.umount("/sd")
    print(
        json.dumps(
            {
                "octets": octets,
                "small_octets": len(head) + small_chunks * len(chunk),
                "small_write_alloc": small_write,
                "small_read_alloc": small_read,
                "write_alloc": write_alloc,
                "read_alloc": read_alloc,
                "writeblocks_alloc_per_call": (t1 - t0) / CALLS,
                "readblocks_alloc_per_call": (t2 - t1) / CALLS,
                "write_calls": write_calls,
                "read_calls": read_calls,
            }
        )
    )


main()
