"""The board's collector: per-user accounts at outside providers that the board polls over
POP3S and delivers into the user's local mailbox (console requests collect.*,
docs/console-protocol.md). The password of an account goes to the board once and never comes
back: the board shows it as ********.
"""

SECURITY = ("tls", "stls", "plain")
DEFAULT_PORTS = {"tls": 995, "stls": 110, "plain": 110}
MIN_INTERVAL = 5  # minutes, as the board's
DEFAULT_INTERVAL = 30
# What an account is made of, besides its user, host, login and password (and their defaults).
SETTINGS = {"port": None, "security": "tls", "interval": DEFAULT_INTERVAL, "keep": True, "delete_days": 0, "max_size": 0}


def account_args(user, host, login, password, **settings) -> dict:
    """The arguments of collect.add for one account; unset settings take the board's defaults."""
    args = {"user": user, "host": host, "login": login, "password": password}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ValueError(f"unknown setting {key}")
        if value is not None:
            args[key] = value
    return args


def list_accounts(board) -> list[dict]:
    """The accounts with their last poll: id, user, host, port, security, login, interval, keep,
    delete_days, max_size, last_poll_ago_s, result, fetched, fetched_total, deleted, polls, next_s."""
    return board.request("collect.list", {})["accounts"]


def add_account(board, user, host, login, password, **settings) -> dict:
    """Adds (or, for the same user, host and login, changes) an account; returns it as listed."""
    return board.request("collect.add", account_args(user, host, login, password, **settings))


def delete_account(board, aid: str) -> str:
    return board.request("collect.del", {"id": aid})["id"]


# The result of a poll that ran short of the board's memory: the board polls again by itself
# ten seconds later.
SHORT_OF_MEMORY = "not enough memory now (polled again soon)"


def poll_now(board, aid: str | None = None, wait: float = 0, interval: float = 0.5) -> list[dict]:
    """Asks for a poll of account `aid` (or every account) now; with `wait` seconds, waits for
    the polls to end (a poll that ran short of the board's memory: for the board's next one)
    and returns the accounts polled as listed then."""
    import time

    before = board.request("collect.now", {"id": aid} if aid else {})["accounts"]
    deadline = time.monotonic() + wait
    while True:
        accounts = [a for a in list_accounts(board) if a["id"] in before]
        for a in accounts:
            if a["polls"] > before[a["id"]] and a["result"] == SHORT_OF_MEMORY:
                before[a["id"]] = a["polls"]  # the board's own retry is the answer
        if all(a["polls"] > before[a["id"]] for a in accounts) or time.monotonic() >= deadline:
            return accounts
        time.sleep(interval)
