# Entry point: on a board MicroPython runs /main.py at boot; the unix board runs this file with
# its options (see pocketpost/board/unix.py).
from pocketpost.board import open_board
from pocketpost.boot import start

app = start(open_board())
start = None  # boot.py's code goes: it was needed once
from pocketpost.app import run_until_stopped

run_until_stopped(app)
