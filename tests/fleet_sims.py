"""The README's two-board fleet (examples/fleet) as the tests run it: the example files copied
into a temporary folder, the secrets they name written beside them, and one `pocketpost sim`
per board at the data folder the files point to."""

import poplib
import re
import shutil
from pathlib import Path

from pocketpost_host.provision import Board

from sim_process import SimProcess, run_cli, stop_quietly

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"
BOARDS = ("mail-a", "mail-b")
DOMAIN = "lab.example"
# The passwords behind examples/fleet: alice's hash is in the files, the others are secrets.
ALICE_PASSWORD = "wonderland"
BOB_PASSWORD = "bob-pass"
PUPIL_PASSWORD = "pupil-pass"
WIFI_PASSWORD = "lab-wifi-pass"
SECRETS = (BOB_PASSWORD, PUPIL_PASSWORD, WIFI_PASSWORD)


class Fleet:
    """The example folder in `root` and its boards (started by start())."""

    def __init__(self, root):
        self.root = Path(root)
        shutil.copytree(EXAMPLE, self.root, dirs_exist_ok=True)
        secrets = self.root / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "pupil.txt").write_text(PUPIL_PASSWORD + "\n")
        (secrets / "wifi.txt").write_text(WIFI_PASSWORD + "\n")
        self.inventory = self.root / "lab.yml"
        self.sims = {}

    def start(self, *names, options=("--domain", DOMAIN)):
        for name in names or BOARDS:
            # Kept before it starts, so that stop() cleans up after one that failed to.
            self.sims[name] = SimProcess(self.root / "sims" / name, *options)
            self.sims[name].start()
        return self

    def stop(self):
        for sim in self.sims.values():
            stop_quietly(sim)

    def board(self, name):
        """A console session with board `name` (close it after use)."""
        return Board.open(self.sims[name].link)

    def users(self, name):
        with self.board(name) as board:
            return {u["name"]: u for u in board.list_users()}

    def config(self, name):
        with self.board(name) as board:
            return board.get_config()["config"]

    def write(self, filename, text):
        path = self.root / filename
        path.write_text(text)
        return path


ITEM = re.compile(r"^(ok|changed|failed|unreachable): \[([^\]]+)\] ?([^:\n]*)", re.M)
RECAP = re.compile(
    r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def items(output, board=None, status=None):
    """(status, board, item) of each item line of `pocketpost apply`'s output."""
    return [
        (s, b, i) for s, b, i in ITEM.findall(output)
        if (board is None or b == board) and (status is None or s == status)
    ]


def recap(output):
    """{board: (ok, changed, unreachable, failed)} from the recap (pocketpost or Ansible)."""
    return {m[0]: tuple(int(n) for n in m[1:]) for m in RECAP.findall(output)}


def pop3_login(sim, user, password):
    """Logs in to a board's POP3 server with USER/PASS (poplib.error_proto when refused)."""
    client = poplib.POP3("127.0.0.1", sim.pop3_port, timeout=20)
    try:
        client.user(user)
        client.pass_(password)
        client.quit()
    finally:
        client.close()  # also after a refusal


def apop_login(sim, user, secret):
    client = poplib.POP3("127.0.0.1", sim.pop3_port, timeout=20)
    try:
        client.apop(user, secret)
        client.quit()
    finally:
        client.close()


def apply(*args):
    """`pocketpost apply` with these arguments (paths given as they are)."""
    return run_cli("apply", *[str(a) for a in args])


def changed_items(output, board):
    """The items `apply` reported changed on `board`, sorted."""
    return sorted(item for _, _, item in items(output, board, "changed"))


def assert_inventory_refused(result, starts):
    """`apply` refused its inventory before contacting any board: the usage error's exit code,
    nothing on stdout, and one error line on stderr for each of `starts`, beginning with it."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.removeprefix("Error: ").splitlines()
    assert len(lines) == len(starts), result.stderr
    for line, start in zip(lines, starts):
        assert line.startswith(start), (line, start)
