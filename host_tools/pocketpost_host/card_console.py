"""A running board's card reached over its console, as an import destination that keeps UIDLs.

The console protocol has no request that stores a message, so this goes through MicroPython's
raw REPL as `pocketpost deploy` does (mpremote's serial transport, entered with `resume`):
Ctrl-C stops the firmware (it unmounts the card; mail service pauses), the card is mounted
from the REPL (the ESP32 layer's own SD mount; the emulated board's image file), the mailbox
files are written in the firmware's order (a message file complete before its record, the
index replaced as a deletion replaces it), the card is unmounted and the board soft-reset:
the firmware starts again and its boot check sees the card as the import left it.

Used through migrate.CardImage, which prepares each mailbox in a host folder; this class is
its file-transfer half, like migrate.FatImage for an image file.
"""

import json
import posixpath

from .errors import PocketpostError, PortError
from .migrate import MigrateError

# The card's mount point on the board (the firmware's SD_MOUNT).
SD = "/sd"

_MOUNT = """\
import os, sys
if sys.platform == 'esp32':
    from pocketpost.board.esp32 import Esp32Board
    class _Log:
        def info(self, *a):
            pass
        warn = error = exception = info
    _board = Esp32Board.from_flash()
    if _board.mount_sd(_Log()) is None:
        raise OSError(5)
else:
    from pocketpost.board.unix import FileBlockDevice
    os.mount(os.VfsFat(FileBlockDevice('../sd.img', 512)), '/sd')
"""

_UNMOUNT = """\
import os
try:
    _board.unmount()
except NameError:
    os.umount('/sd')
"""

# Prints one JSON line: the files under a folder of the card, relative to it.
_WALK = """\
import os, json
def _walk(p, rel):
    out = []
    for e in os.ilistdir(p):
        q, r = p + '/' + e[0], rel + e[0]
        out += _walk(q, r + '/') if e[1] == 0x4000 else [r]
    return out
print(json.dumps(_walk({path!r}, '')))
"""

_EXISTS = """\
import os
try:
    os.stat({path!r})
    print(1)
except OSError:
    print(0)
"""


class ConsoleCard:
    """The card of the board on console `port` (see the module docstring); `close()` unmounts
    it and starts the firmware again."""

    def __init__(self, port, hello_timeout=60.0):
        from mpremote.transport import TransportError

        from .deploy import _open
        from .transport import detect_port

        self.port = port or detect_port()
        self.hello_timeout = hello_timeout
        self.transport = _open(self.port)
        self.mounted = False
        try:
            self.transport.enter_raw_repl(soft_reset=False)  # Ctrl-C: the firmware stops
        except TransportError as e:
            self.transport.close()
            raise PocketpostError(f"no MicroPython REPL on {self.port}: {e}") from None
        self._exec(_MOUNT, "cannot mount the board's card")
        self.mounted = True

    def _exec(self, code, what="the board failed"):
        from mpremote.transport import TransportError

        try:
            return self.transport.exec(code)
        except TransportError as e:
            raise MigrateError(f"{what}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}") from None
        except OSError as e:
            raise PortError(f"{self.port}: {e}") from None

    def close(self):
        """Unmounts the card (FatFS writes back what it holds) and soft-resets the board; waits
        until the firmware answers on the console again."""
        from .flash import wait_for_console

        if self.transport is None:
            return
        try:
            if self.mounted:
                self._exec(_UNMOUNT, "cannot unmount the board's card")
            self.transport.exit_raw_repl()
            self.transport.serial.write(b"\x04")  # Ctrl-D at the friendly REPL: soft reset
        finally:
            self.transport.close()
            self.transport = None
        wait_for_console(self.port, self.hello_timeout, info=False)

    # ---- what migrate.CardImage asks of its file-transfer half

    def exists(self, path):
        return self._exec(_EXISTS.format(path=SD + path)).strip() == b"1"

    def mkdir(self, path):
        self._exec(f"import os\nos.mkdir({SD + path!r})", f"cannot make {path} on the card")

    def extract(self, path, dest):
        """Copies folder `path` of the card (and all below it) into the host folder `dest`."""
        files = json.loads(self._exec(_WALK.format(path=SD + path)).decode())
        top = dest / posixpath.basename(path)
        top.mkdir(parents=True, exist_ok=True)
        for rel in files:
            target = top / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._read(f"{SD}{path}/{rel}"))

    def _read(self, path):
        from mpremote.transport import TransportError

        try:
            return self.transport.fs_readfile(path)
        except TransportError as e:
            raise MigrateError(f"cannot read {path} from the card: {e}") from None

    def put(self, files, folder):
        """Writes host files into folder `folder` of the card: each is written as a temp file
        and renamed into place; an index replaces the old one as the firmware's deletion does
        (index.new, remove index, rename), a step the boot check completes if cut short."""
        from mpremote.transport import TransportError

        for local in files:
            name = local.name
            target = f"{SD}{folder}/{name}"
            temp = f"{SD}/tmp/import" if name != "index" else target + ".new"
            try:
                self.transport.fs_writefile(temp, local.read_bytes())
            except TransportError as e:
                raise MigrateError(f"cannot write {target} on the card: {e}") from None
            self._exec(
                f"import os\ntry:\n os.remove({target!r})\nexcept OSError:\n pass\nos.rename({temp!r}, {target!r})",
                f"cannot write {target} on the card",
            )

    def space(self):
        """(free octets, cluster size) of the card."""
        st = json.loads(self._exec(f"import os, json\nprint(json.dumps(os.statvfs({SD!r})))").decode())
        return st[4] * st[1], st[0]
