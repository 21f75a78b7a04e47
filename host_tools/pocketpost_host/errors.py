"""The one exception type of the host tools: every failure a user can act on."""


class PocketpostError(Exception):
    """A failure reported to the user as one line, with a non-zero exit code."""

    exit_code = 1


class BoardTimeout(PocketpostError):
    """The board did not answer in time."""

    exit_code = 3


class BoardError(PocketpostError):
    """The board answered a request with an error."""

    exit_code = 4

    def __init__(self, code, message):
        super().__init__(f"board error {code}: {message}")
        self.code = code
        self.board_message = message


class PortError(PocketpostError):
    """The console port cannot be found or opened."""

    exit_code = 5


class PortBusy(PortError):
    """Another program has the port open."""
