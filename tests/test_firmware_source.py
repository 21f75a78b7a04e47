"""The firmware source as a board takes it."""

import ast
import subprocess

import pytest

import name_pool
from pocketpost_host import firmware

SOURCES = sorted(firmware.source_dir().rglob("*.py"))
BOARD_ONLY_MODULES = {"machine", "network", "esp32"}


@pytest.mark.parametrize("march", [None, "xtensawin"])
def test_every_file_compiles_with_mpy_cross(tmp_path, march):
    """mpy-cross rejects syntax MicroPython lacks; xtensawin is the ESP32's architecture."""
    for source in SOURCES:
        cmd = firmware.mpy_cross_command() + [f"-O{firmware.OPT}", "-o", str(tmp_path / "out.mpy")]
        if march:
            cmd.append("-march=" + march)
        result = subprocess.run(cmd + [str(source)], capture_output=True, text=True)
        assert result.returncode == 0, "{}: {}".format(source, result.stderr)


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_only_the_board_layer_imports_hardware_modules():
    board_dir = firmware.source_dir() / "pocketpost" / "board"
    for source in SOURCES:
        if board_dir in source.parents:
            continue
        assert not BOARD_ONLY_MODULES & set(imported_modules(source)), source


def test_no_f_strings_or_asserts_in_device_code():
    """Device code uses str.format (as MicroPython's own libraries do) and never validates with
    assert, which mpy-cross -O removes."""
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.JoinedStr), "{}:{} f-string".format(source, node.lineno)
            assert not isinstance(node, ast.Assert), "{}:{} assert".format(source, node.lineno)


# Names a running board interns beyond those its modules' code holds, with room for more: at
# its "ready" a board had 1,057 names on 64-bit and 1,091 on 32-bit (micropython.qstr_info()),
# where name_pool counts 1,020 and 1,054.
RUNTIME_NAMES = 64


def test_the_firmware_names_leave_room_before_the_next_name_pool(app_dir):
    """MicroPython keeps every name for good, in pools that double: the names of the whole
    firmware, interned at boot, must fit in the pools the board has, or its boot takes the next
    pool as one block (~14 KB of a 64-bit heap, ~9 KB of a 32-bit one) from every heap it runs
    at."""
    names, octets, headroom, next_pool = name_pool.measure(app_dir, firmware.find_micropython())
    assert headroom is not None and headroom >= RUNTIME_NAMES, (
        "{} names after boot ({} octets) leave room for {} more before the next name pool, a "
        "block of {} octets taken at boot: fewer names, or a heap budget that pays for the pool "
        "(docs/memory.md)".format(names, octets, headroom, next_pool)
    )
