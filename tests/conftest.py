import pytest

from pocketpost_host import firmware

import wire
from emulated_board import EmulatedBoard

# The hardware suite's options and its deselection (tests/board_suite.py).
pytest_plugins = ["board_suite"]


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the long soak tests (marked soak); without it they are deselected")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: a long soak test, collected only with --soak")


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
    for board in boards:
        board.stop()


@pytest.fixture
def board(make_board):
    """A started emulated board with user alice (password "wonderland")."""
    b = make_board().start()
    b.add_user("alice", "wonderland")
    return b
