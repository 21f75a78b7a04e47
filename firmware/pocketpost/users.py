# User accounts on internal flash: one small JSON file per user, replaced atomically (write a new
# file, then rename it over the old one: LittleFS renames atomically, unlike FAT).
import asyncio
import json
import os

from micropython import const

from . import crypto

# Longest user name; also the longest local part RFC 5321 allows (64).
MAX_NAME = const(64)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"
# APOP secrets are shared secrets typed by people; bound them like a password.
MAX_APOP_SECRET = const(256)


def valid_name(name):
    """1-64 of [a-z0-9._-], not starting or ending with '.': nothing that can leave the mailbox
    folder or share one (FAT drops trailing dots: "bob." would open bob's mailbox)."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or name[0] == "." or name[-1] == ".":
        return False
    for c in name:
        if c not in _NAME_CHARS:
            return False
    return True


class Users:
    def __init__(self, root):
        self.dir = root + "/users"
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        self._apop_users = None  # cached count of users with an APOP secret
        self._hashing = asyncio.Lock()

    def _path(self, name):
        return "{}/{}".format(self.dir, name)

    def get(self, name):
        """The user's record (a dict with "hash" and maybe "apop"), or None."""
        if not valid_name(name):
            return None
        try:
            with open(self._path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def exists(self, name):
        """True when user `name` exists (a stat: cheaper than reading the record)."""
        if not valid_name(name):
            return False
        try:
            os.stat(self._path(name))
            return True
        except OSError:
            return False

    def names(self):
        """Yields the user names, in no particular order (no list of them is made)."""
        for entry in os.ilistdir(self.dir):
            if valid_name(entry[0]):
                yield entry[0]

    def apop_enabled(self):
        """True when at least one user has an APOP secret (the POP3 greeting then has a timestamp)."""
        if self._apop_users is None:
            self._apop_users = sum(1 for n in self.names() if "apop" in (self.get(n) or {}))
        return self._apop_users > 0

    # Changes to the records are made by console requests only: requests/users.py.

    async def verify(self, name, password):
        """True when the user exists and the password matches. An unknown user costs a hash too,
        so the time taken does not tell which names exist.

        One hash at a time: each allocates ~0.5 KB per iteration (hash objects, digests), and
        several at once would interleave that churn with the sessions' own objects and leave
        the heap in fragments; logins that arrive together wait their turn."""
        async with self._hashing:
            record = self.get(name)
            if record is None:
                await crypto.verify(password, _DUMMY_HASH)
                return False
            try:
                return await crypto.verify(password, record["hash"])
            except (ValueError, KeyError):
                return False


# Same cost as a typical user's hash (the host tools' default iteration count).
_DUMMY_HASH = "pbkdf2-sha256$2048$00000000000000000000000000000000$" + "00" * 32
