"""A board on a serial line, reached as pyserial's socket://127.0.0.1:PORT: first its flasher
stub (esptool's serial protocol, as documented in esptool's "Serial Protocol" page: SLIP frames,
commands SYNC, READ_REG, GET_SECURITY_INFO, SPI_ATTACH, FLASH_DEFL_BEGIN/DATA/END, SPI_FLASH_MD5,
ERASE_FLASH), then, after esptool has written the flash and let go, the firmware's console
(`PP> id hello` / `info`). The flash is a bytearray the test reads back.

It pretends the stub already runs (sync answers 0), which esptool accepts without uploading
the stub (it does so after an interrupted run)."""

import hashlib
import json
import socket
import struct
import threading
import zlib

SLIP_END, SLIP_ESC = 0xC0, 0xDB
CHIPS = {
    # name: (security info chip id or None (the ESP32 has no such command), magic register value)
    "esp32": (None, 0x00F01D83),
    "esp32s3": (9, None),
}
MAGIC_REG = 0x40001000
SPI_W0 = {"esp32": 0x3FF42000 + 0x80, "esp32s3": 0x60002000 + 0x58}
FLASH_ID = 0x164020  # a 4 MB part (manufacturer 0x20, device 0x4016)


def slip(data):
    body = data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class FakeBoard:
    def __init__(self, chip="esp32", flash_size=4 << 20, info=None):
        self.chip = chip
        self.flash = bytearray(b"\xff" * flash_size)
        self.commands = []  # op codes received, in order
        self.written = False
        self.console_requests = []
        self.info = info or {"firmware": "0.1.0", "board": "esp32-devkitc", "users": 0, "wifi": "not configured",
                             "storage": {"state": "ok"}}
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.url = "socket://127.0.0.1:{}".format(self.server.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self):
        self._stop = True
        self.server.close()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    if self.written:
                        self._console(conn)
                    else:
                        self._bootloader(conn)
                except (OSError, ConnectionError):
                    pass

    # ---- the flasher stub

    def _frames(self, conn):
        buf = bytearray()
        frame = None
        escaped = False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for b in data:
                if frame is None:
                    if b == SLIP_END:
                        frame = bytearray()
                    continue
                if escaped:
                    frame.append(SLIP_END if b == 0xDC else SLIP_ESC)
                    escaped = False
                elif b == SLIP_ESC:
                    escaped = True
                elif b == SLIP_END:
                    if frame:
                        yield bytes(frame)
                        frame = None
                    # an empty frame: the END that opened it
                else:
                    frame.append(b)
            del buf[:]

    def _reply(self, conn, op, value=0, data=b"", status=(0, 0)):
        payload = data + bytes(status)
        conn.sendall(slip(struct.pack("<BBHI", 1, op, len(payload), value) + payload))

    def _bootloader(self, conn):
        decompressor = None
        offset = 0
        for frame in self._frames(conn):
            if len(frame) < 8 or frame[0] != 0:
                continue
            op, size = frame[1], struct.unpack_from("<H", frame, 2)[0]
            data = frame[8 : 8 + size]
            self.commands.append(op)
            if op == 0x08:  # SYNC: the stub answers 8 times, with 0
                for _ in range(8):
                    self._reply(conn, op)
            elif op == 0x0A:  # READ_REG
                addr = struct.unpack_from("<I", data)[0]
                security_id, magic = CHIPS[self.chip]
                value = 0
                if addr == MAGIC_REG and magic is not None:
                    value = magic
                elif addr == SPI_W0[self.chip]:
                    value = FLASH_ID
                self._reply(conn, op, value)
            elif op == 0x14:  # GET_SECURITY_INFO
                security_id = CHIPS[self.chip][0]
                if security_id is None:
                    self._reply(conn, op, status=(1, 5))  # not supported on the ESP32
                else:
                    self._reply(conn, op, data=struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, security_id, 0))
            elif op == 0x10:  # FLASH_DEFL_BEGIN: erase size, blocks, block size, offset
                offset = struct.unpack_from("<IIII", data)[3]
                decompressor = zlib.decompressobj()
                self._reply(conn, op)
            elif op == 0x11:  # FLASH_DEFL_DATA: length, sequence, 0, 0, then the block
                chunk = decompressor.decompress(data[16:])
                self.flash[offset : offset + len(chunk)] = chunk
                offset += len(chunk)
                self._reply(conn, op)
            elif op == 0x12:  # FLASH_DEFL_END
                self.written = True
                self._reply(conn, op)
            elif op == 0x13:  # SPI_FLASH_MD5: address, size -> 16 raw octets from the stub
                addr, length = struct.unpack_from("<II", data)
                self._reply(conn, op, data=hashlib.md5(self.flash[addr : addr + length]).digest())
            elif op == 0xD0:  # ERASE_FLASH
                self.flash[:] = b"\xff" * len(self.flash)
                self._reply(conn, op)
            else:  # SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE, WRITE_REG, ...
                self._reply(conn, op)

    # ---- the firmware's console after the reset

    def _console(self, conn):
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.rstrip(b"\r").decode()
                if not line.startswith("PP> "):
                    continue
                rid, command = line[4:].split(" ")[:2]
                self.console_requests.append(command)
                if command == "hello":
                    reply = {"protocol": 1, "firmware": self.info["firmware"], "board": self.info["board"]}
                else:
                    reply = self.info
                conn.sendall(f"PP< {rid} ok {json.dumps(reply)}\r\n".encode())
