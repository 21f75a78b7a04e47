"""`pocketpost deploy` against the simulator's console pseudo-terminal: only changed compiled
files are copied (mpremote's transport, entered with `resume`), stale ones removed, and the
soft reset brings the firmware back."""

import shutil

import pytest

from pocketpost_host import deploy, firmware
from pocketpost_host.provision import Board

from sim_process import SimProcess, run_cli, stop_quietly


@pytest.fixture
def sim(tmp_path):
    process = SimProcess(tmp_path / "sim").start()
    yield process
    stop_quietly(process)


def test_deploy_copies_only_what_changed_and_restarts_the_firmware(sim, tmp_path, monkeypatch):
    # The simulator compiled the same source into its app folder: nothing to copy.
    first = deploy.deploy(port=sim.link, emit=lambda line: None)
    assert (first.written, first.removed, first.firmware) == ([], [], "0.1.0")
    assert first.unchanged == len(deploy.local_files(None))
    sim.wait_for("sim: soft reset; starting the firmware")

    # A change in one module, and a compiled module whose source is gone.
    source = tmp_path / "firmware"
    shutil.copytree(firmware.source_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
    init = source / "pocketpost" / "__init__.py"
    init.write_text(init.read_text().replace('VERSION = "0.1.0"', 'VERSION = "0.1.0+dev"'))
    (sim.data / "app" / "pocketpost" / "gone.mpy").write_bytes(b"M\x06\x00\x1f")
    monkeypatch.setenv("POCKETPOST_FIRMWARE", str(source))
    result = run_cli("--port", sim.link, "deploy")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("wrote pocketpost/__init__.mpy ("), result.stderr
    assert result.stdout == f"pocketpost 0.1.0+dev is running on {sim.link}: 1 files written, 1 removed, " \
        f"{first.unchanged - 1} unchanged\n"
    assert "wrote pocketpost/__init__.mpy (" in result.stderr and "removed pocketpost/gone.mpy" in result.stderr
    assert not (sim.data / "app" / "pocketpost" / "gone.mpy").exists()
    with Board.open(sim.link) as board:
        assert board.firmware == "0.1.0+dev"
    run_cli("--port", sim.link, "user", "add", "alice", "--password-stdin", input="wonderland\n")
    sim.pop3_login("alice", "wonderland").quit()


def test_deploy_without_a_board(tmp_path):
    result = run_cli("deploy", "--port", str(tmp_path / "ttyUSB7"))
    assert result.exit_code == 5
    assert result.stderr == f"Error: cannot open {tmp_path / 'ttyUSB7'} (is it there, and not open in another program?)\n"


def test_an_esp32_gets_no_unix_board_layer():
    files = deploy.local_files("esp32-devkitc")
    assert "pocketpost/board/unix.mpy" in files and "pocketpost/board/esp32.mpy" in files
    esp32 = deploy.for_platform(files, "esp32")
    assert set(files) - set(esp32) == {"pocketpost/board/unix.mpy", "pocketpost/board/unix_setup.mpy"}
    assert deploy.for_platform(files, "linux") == files
