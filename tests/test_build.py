"""`pocketpost build`: the LittleFS image, the merged image with a base firmware, reproducible
bytes, the frozen-build manifest; the unix board booting from its built image."""

import hashlib
import json
import shutil
import struct
import subprocess
import textwrap

import pytest
from click.testing import CliRunner

from pocketpost_host import boards, build, check, cli, firmware

from emulated_board import EmulatedBoard

IMAGE_HEAP = firmware.DEFAULT_HEAP


# ---- a synthetic MicroPython firmware image, with a real partition table


def partition_table(entries):
    """The binary partition table ESP-IDF's gen_esp32part.py writes: 32-octet entries
    (magic AA 50, type, subtype, offset, size, label, flags), an MD5 entry (EB EB, 14 x FF, the
    MD5 of the entries), 0xFF up to 0xC00."""
    data = b"".join(
        struct.pack("<2sBBLL16sL", b"\xaa\x50", ptype, subtype, offset, size, label.encode(), 0)
        for label, ptype, subtype, offset, size in entries
    )
    data += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(data).digest()
    return data + b"\xff" * (0xC00 - len(data))


def esp_image(chip_id, payload=b""):
    """An ESP image: the 8-octet header (magic E9, 1 segment, flash mode DIO, 4MB/40m, entry),
    the 16-octet extended header with the chip id, one segment holding `payload`."""
    header = struct.pack("<BBBBL", 0xE9, 1, 2, 0x20, 0x40080000)
    extended = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", chip_id, 0, 0, 0xFFFF, b"\0" * 4, 0)
    segment = struct.pack("<LL", 0x3F400020, len(payload)) + payload
    return header + extended + segment


def app_description(version, project="micropython"):
    """esp_app_desc_t: magic, secure version, reserved, version[32], project_name[32], ..."""
    return struct.pack("<LL8s32s32s16s16s32s32s", 0xABCD5432, 0, b"", version.encode(), project.encode(),
                       b"12:00:00", b"Nov 29 2024", b"v5.2.2", b"\x11" * 32)


def base_firmware(board, vfs=None, chip_id=None, version="v1.24.1", project="micropython"):
    """A base firmware for `board` as micropython.org ships it: bootloader at the firmware's
    offset, partition table at 0x8000, app at 0x10000; the vfs partition where the board's
    definition has it unless `vfs` = (offset, size) says otherwise."""
    base = board.firmware_offset
    chip_id = chip_id if chip_id is not None else {v: k for k, v in build.CHIP_IDS.items()}[board.chip]
    vfs_offset, vfs_size = vfs or (board.fs_offset, board.fs_size)
    table = partition_table([
        ("nvs", 1, 0x02, 0x9000, 0x6000),
        ("phy_init", 1, 0x01, 0xF000, 0x1000),
        ("factory", 0, 0x00, 0x10000, vfs_offset - 0x10000),
        ("vfs", 1, 0x81, vfs_offset, vfs_size),
    ])
    image = bytearray(b"\xff" * (0x10000 - base))
    bootloader = esp_image(chip_id, b"\x55" * 1000)
    image[: len(bootloader)] = bootloader
    image[0x8000 - base : 0x8000 - base + len(table)] = table
    app = esp_image(chip_id, app_description(version, project) + b"\x66" * 5000)
    return bytes(image) + app


@pytest.fixture
def devkitc():
    return boards.load("esp32-devkitc")


def write_base(tmp_path, board, **kwargs):
    path = tmp_path / "ESP32_GENERIC-test.bin"
    path.write_bytes(base_firmware(board, **kwargs))
    return path


def test_merged_image_has_the_base_firmware_and_the_filesystem_at_their_offsets(tmp_path, devkitc):
    base_path = write_base(tmp_path, devkitc)
    result = build.build(devkitc, out=tmp_path / "out", base_firmware=base_path)
    merged = result.merged.read_bytes()
    base = base_path.read_bytes()
    fs = result.fs_image.read_bytes()
    start = result.write_offset
    assert start == 0x1000 and result.fs_offset == 0x200000
    # Parse the merged image back: the base firmware at its offset, erased flash up to the
    # filesystem partition, the filesystem, and nothing after it.
    assert merged[: len(base)] == base
    assert set(merged[len(base) : 0x200000 - start]) == {0xFF}
    assert merged[0x200000 - start :] == fs
    assert len(merged) == 0x400000 - start
    table = build.read_partition_table(merged[0x8000 - start : 0x8000 - start + 0xC00])
    vfs = next(p for p in table if p.label == "vfs")
    assert (vfs.offset, vfs.size) == (0x200000, 0x200000)
    # and the filesystem in it is the app
    files = build.read_image_files(merged[vfs.offset - start : vfs.offset - start + vfs.size])
    assert files == build.read_image_files(fs)
    assert json.loads(files["board.json"])["sd"]["cs"] == 5
    summary = json.loads((tmp_path / "out" / "build.json").read_text())
    assert summary["merged"] == {"image": "pocketpost-esp32-devkitc.bin", "offset": "0x1000", "size": len(merged),
                                 "sha256": hashlib.sha256(merged).hexdigest()}
    assert summary["base_firmware"]["micropython"] == "v1.24.1"


def test_s3_firmware_goes_at_zero(tmp_path):
    board = boards.load("esp32-s3-devkitc")
    result = build.build(board, out=tmp_path / "out", base_firmware=write_base(tmp_path, board))
    merged = result.merged.read_bytes()
    assert result.write_offset == 0
    assert merged[0] == 0xE9 and struct.unpack_from("<H", merged, 12)[0] == 9
    assert merged[0x200000 : 0x800000] == result.fs_image.read_bytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vfs": (0x310000, 0xF0000)}, "partition 'vfs' is at 0x310000, 0xf0000 octets; board esp32-devkitc expects 0x200000, 0x200000"),
        ({"chip_id": 9}, "is firmware for esp32s3; board esp32-devkitc has an esp32"),
        ({"version": "v1.22.2"}, "is MicroPython v1.22.2; pocketpost's .mpy files need 1.23 or newer"),
        ({"project": "blink"}, "is not MicroPython (its app is 'blink')"),
    ],
)
def test_base_firmware_that_does_not_fit_is_refused(tmp_path, devkitc, kwargs, message):
    base = write_base(tmp_path, devkitc, **kwargs)
    with pytest.raises(build.PocketpostError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")):
        build.build(devkitc, out=tmp_path / "out", base_firmware=base)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_other_base_firmware_problems(tmp_path, devkitc):
    with pytest.raises(build.PocketpostError, match="firmware file .*nothing.bin does not exist"):
        build.build(devkitc, out=tmp_path / "out", base_firmware=tmp_path / "nothing.bin")
    (tmp_path / "text.bin").write_bytes(b"hello")
    with pytest.raises(build.PocketpostError, match="is not an ESP32 firmware image"):
        build.build(devkitc, out=tmp_path / "out", base_firmware=tmp_path / "text.bin")
    merged = build.build(devkitc, out=tmp_path / "m", base_firmware=write_base(tmp_path, devkitc)).merged
    with pytest.raises(build.PocketpostError, match="reaches into the filesystem partition .*already a merged image"):
        build.build(devkitc, out=tmp_path / "out", base_firmware=merged)
    damaged = bytearray(base_firmware(devkitc))
    damaged[0x8000 - 0x1000 + 40] ^= 1
    (tmp_path / "damaged.bin").write_bytes(damaged)
    with pytest.raises(build.PocketpostError, match="MD5 sum does not match"):
        build.build(devkitc, out=tmp_path / "out", base_firmware=tmp_path / "damaged.bin")
    newer = write_base(tmp_path, devkitc, version="v1.27.0")
    result = build.build(devkitc, out=tmp_path / "out", base_firmware=newer)
    assert result.notes == ["ESP32_GENERIC-test.bin is MicroPython v1.27.0; board esp32-devkitc was written for "
                            "v1.24.1 (its partition layout matches)"]


def test_builds_are_reproducible(tmp_path, devkitc):
    base = write_base(tmp_path, devkitc)
    first = build.build(devkitc, out=tmp_path / "a", base_firmware=base)
    second = build.build(devkitc, out=tmp_path / "b", base_firmware=base)
    for name in ("pocketpost-esp32-devkitc-fs.bin", "pocketpost-esp32-devkitc.bin", "build.json", "frozen/manifest.py"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.files == second.files


@pytest.mark.parametrize("name", boards.names())
def test_every_board_builds_an_image_of_its_partition(tmp_path, name):
    board = boards.load(name)
    result = build.build(name, out=tmp_path / name)
    image = result.fs_image.read_bytes()
    assert len(image) == board.fs_size
    files = build.read_image_files(image)
    other = "esp32" if board.emulated else "unix"
    assert "pocketpost/boot.mpy" in files and "main.py" in files and f"pocketpost/board/{other}.mpy" not in files
    assert json.loads(files["board.json"]) == board.definition
    assert json.loads(files["config.json"]) == {}
    assert {path: hashlib.sha256(data).hexdigest() for path, data in files.items()} == result.files


def test_the_image_mounts_in_the_unix_port(tmp_path):
    """os.VfsLfs2 over a file-backed block device, as the ESP32 port mounts its vfs partition."""
    result = build.build("esp32-devkitc", out=tmp_path / "out", config={"hostname": "mail.example.org"})
    script = textwrap.dedent(f"""
        import os, hashlib, binascii, json
        class Dev:
            def __init__(self, path):
                self.f = open(path, "rb")
                self.f.seek(0, 2)
                self.n = self.f.tell() // 4096
            def readblocks(self, block, buf, offset=0):
                self.f.seek(block * 4096 + offset)
                self.f.readinto(buf)
            def writeblocks(self, block, buf, offset=0):
                raise OSError(30)
            def ioctl(self, op, arg):
                return {{4: self.n, 5: 4096}}.get(op, 0)
        os.mount(os.VfsLfs2(Dev({str(result.fs_image)!r}), readsize=32, progsize=32, lookahead=32), "/flash", readonly=True)
        def walk(path):
            for name, kind, *_ in os.ilistdir(path):
                full = path + "/" + name
                if kind == 0x4000:
                    yield from walk(full)
                else:
                    with open(full, "rb") as f:
                        yield full[len("/flash/"):], binascii.hexlify(hashlib.sha256(f.read()).digest()).decode()
        print(json.dumps(dict(walk("/flash"))))
        print(json.load(open("/flash/config.json"))["hostname"])
    """)
    out = subprocess.run([firmware.find_micropython(), "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listing, hostname = out.stdout.splitlines()
    assert json.loads(listing) == result.files
    assert hostname == "mail.example.org"


def test_unix_board_boots_from_its_built_image_and_passes_the_protocol_checks(tmp_path):
    result = build.build("unix", out=tmp_path / "out")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(result.fs_image, data / "flash.img")
    # rom/main.py mounts flash.img and runs main.py from it. Imported from LittleFS (as on a
    # board) the code leaves the heap more fragmented than imported from the host's files
    # (about 8 KB more heap for the same checks, measured when the default was 144k).
    # (Its code is the image's, whatever POCKETPOST_TEST_CODE says.)
    board = EmulatedBoard(tmp_path / "out" / "rom", data, heap=IMAGE_HEAP, code_in_place=False)
    try:
        board.start()
        board.add_user("alice", "wonderland")
        assert board.request("info")["flash_image"] == str(data / "flash.img")
        report = check.run_checks(check.Target(
            host="127.0.0.1", user="alice", password="wonderland", domain="pocketpost.local",
            pop3_port=board.pop3_port, smtp_port=board.smtp_port, timeout=20,
        ))
        assert {r.name: (r.result, r.detail) for r in report.results if r.result != check.PASS} == {}
        assert len(report.results) == len(check.CHECKS)
    finally:
        board.stop()
    # The user went into the image's LittleFS (the board's internal flash).
    assert "users/alice" in build.read_image_files((data / "flash.img").read_bytes())


def test_frozen_build_leaves_the_app_to_the_firmware(tmp_path):
    result = build.build("esp32-devkitc", out=tmp_path / "out", frozen=True)
    assert sorted(result.files) == ["board.json", "config.json", "main.py"]
    manifest = (tmp_path / "out" / "frozen" / "manifest.py").read_text()
    assert 'include("$(PORT_DIR)/boards/manifest.py")' in manifest
    assert 'package("pocketpost", opt=3)' in manifest
    assert "make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=$PWD/manifest.py" in manifest
    frozen = tmp_path / "out" / "frozen" / "pocketpost"
    assert (frozen / "board" / "esp32.py").is_file() and not (frozen / "board" / "unix.py").exists()
    assert (frozen / "boot.py").read_bytes() == (firmware.source_dir() / "pocketpost" / "boot.py").read_bytes()


def run_cli(*args):
    return CliRunner().invoke(cli.cli, list(args), prog_name="pocketpost")


def test_build_command(tmp_path, devkitc):
    base = write_base(tmp_path, devkitc)
    out = tmp_path / "out"
    result = run_cli("build", "--board", "esp32-devkitc", "--firmware", str(base), "--out", str(out),
                     "--config", "hostname=mail.example.org", "--config", "max_clients=6")
    assert result.exit_code == 0, result.output
    assert f"{out}/pocketpost-esp32-devkitc.bin: base firmware + filesystem" in result.stdout
    files = build.read_image_files((out / "pocketpost-esp32-devkitc-fs.bin").read_bytes())
    assert json.loads(files["config.json"]) == {"hostname": "mail.example.org", "max_clients": 6}

    bad = run_cli("build", "--board", "esp32-nothing")
    assert bad.exit_code == 2 and "esp32-nothing is not a board; boards: esp32-cam, esp32-devkitc" in bad.stderr
    bad = run_cli("build", "--board", "esp32-devkitc", "--config", "max_clients=99", "--out", str(out))
    assert bad.exit_code == 2 and "max_clients must be an integer 1..12" in bad.stderr
    bad = run_cli("build", "--board", "esp32-devkitc", "--firmware", str(tmp_path / "none.bin"), "--out", str(out))
    assert (bad.exit_code, bad.stderr) == (1, f"Error: firmware file {tmp_path / 'none.bin'} does not exist\n")
