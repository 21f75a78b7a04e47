import os
import random
import socket

import pytest

from pocketpost_host import firmware

import emulated_board
import reference_servers
import wire
from emulated_board import EmulatedBoard

# ---- ports that stay free when several pytest workers (pytest-xdist) start servers at once
#
# A port the kernel hands out for bind(port 0) comes from the ephemeral range (32768-60999 on
# Linux), which is also where every outgoing connection's local port comes from: between the
# moment a test picks such a port and the moment the firmware binds it, another worker's client
# (or the other worker's own free_port) may take it. Each worker therefore picks from its own
# block of ports below the ephemeral range, in turn from a random start (so two pytest runs with
# the same worker name rarely meet), and only a port it can bind itself.
PORT_BASE = 20000
PORT_BLOCK = 1500  # ports per worker: gw0 20000-21499, gw1 21500-22999, ... (8 workers below 32000)


def _worker_index():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"...; unset without xdist
    return int(worker[2:]) % 8 if worker.startswith("gw") and worker[2:].isdigit() else 0


class WorkerPorts:
    def __init__(self, index):
        self.first = PORT_BASE + index * PORT_BLOCK
        self.next = random.randrange(PORT_BLOCK)

    def __call__(self):
        for _ in range(PORT_BLOCK):
            port = self.first + self.next
            self.next = (self.next + 1) % PORT_BLOCK
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use (or in TIME_WAIT): the next one
                return port
        raise RuntimeError(f"no free port in {self.first}-{self.first + PORT_BLOCK - 1}")


free_port = WorkerPorts(_worker_index())
# Installed before the test modules import it (`from emulated_board import free_port`).
emulated_board.free_port = free_port
reference_servers.free_port = free_port

# The hardware suite's options and its deselection (tests/board_suite.py).
pytest_plugins = ["board_suite"]


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the long soak tests (marked soak); without it they are deselected")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: a long soak test, collected only with --soak")
    config.addinivalue_line(
        "markers",
        "memory: memory-sensitive (several clients at once, large mailboxes, TLS, long console "
        "replies, crash recovery); `make test-under-load` runs these while every core is busy",
    )


def pytest_collection_modifyitems(config, items):
    """Without --soak the soak tests are deselected (pytest's summary counts them as
    "deselected"), not skipped."""
    if config.getoption("--soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.fixture(autouse=True)
def close_wires():
    """Closes the raw connections a test left open."""
    yield
    while wire.OPEN:
        wire.OPEN.pop().close()


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory):
    """The firmware compiled with mpy-cross, as it goes onto a board."""
    out = tmp_path_factory.mktemp("app")
    firmware.compile_tree(firmware.source_dir(), out)
    return out


@pytest.fixture
def make_board(app_dir, tmp_path):
    """Makes emulated boards (each with its own data folder unless given one); stops them after
    the test."""
    boards = []

    def make(data=None, **options):
        board = EmulatedBoard(app_dir, data or tmp_path / f"board{len(boards)}", **options)
        boards.append(board)
        return board

    yield make
    for i, board in enumerate(boards):
        board.stop()
        # Its console, kept beside its data for whoever reads a failure.
        (tmp_path / f"board{i}-console.log").write_text("\n".join(board.lines) + "\n")


@pytest.fixture
def board(make_board):
    """A started emulated board with user alice (password "wonderland")."""
    b = make_board().start()
    b.add_user("alice", "wonderland")
    return b
