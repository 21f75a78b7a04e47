# Entry point: on a board MicroPython runs /main.py at boot; the unix board runs this file with
# its options (see pocketpost/board/unix.py).
from pocketpost.app import main
from pocketpost.board import open_board

main(open_board())
