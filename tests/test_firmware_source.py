"""The firmware source as a board takes it."""

import ast
import subprocess
from pathlib import Path

import pytest

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
