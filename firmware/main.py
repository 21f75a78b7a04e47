# Entry point: on a board MicroPython runs /main.py at boot; the unix board runs this file with
# its options (see pocketpost/board/unix.py).
from pocketpost.board import open_board
from pocketpost.boot import main

main(open_board())
