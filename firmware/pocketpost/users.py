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


class UserError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


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

    def _write(self, name, record):
        # The new record's name starts with a dot, which no user name does (user "alice.new"
        # exists apart from alice's record being replaced).
        tmp = "{}/.{}.new".format(self.dir, name)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, self._path(name))
        self._apop_users = None

    @staticmethod
    def _check_hash(hash_text):
        try:
            crypto.parse_hash(hash_text)
        except (ValueError, AttributeError) as e:
            raise UserError("INVALID", str(e))

    @staticmethod
    def _check_apop(secret):
        if not isinstance(secret, str) or not 0 < len(secret) <= MAX_APOP_SECRET:
            raise UserError("INVALID", "APOP secret must be 1..{} characters".format(MAX_APOP_SECRET))

    def add(self, name, hash_text, apop=None):
        if not valid_name(name):
            raise UserError("INVALID", "user name must be 1-64 of a-z 0-9 . _ - and not start or end with '.'")
        if self.get(name) is not None:
            raise UserError("EXISTS", "user {} exists".format(name))
        self._check_hash(hash_text)
        if apop is not None:
            self._check_apop(apop)
        record = {"hash": hash_text}
        if apop is not None:
            record["apop"] = apop
        self._write(name, record)

    def set_password(self, name, hash_text, apop=False):
        """Replaces the hash; `apop` is a new secret, None to remove it, False to keep it."""
        record = self.get(name)
        if record is None:
            raise UserError("NOTFOUND", "no user {}".format(name))
        self._check_hash(hash_text)
        if apop is not None and apop is not False:
            self._check_apop(apop)
        record["hash"] = hash_text
        if apop is None:
            record.pop("apop", None)
        elif apop is not False:
            record["apop"] = apop
        self._write(name, record)

    def remove(self, name):
        if self.get(name) is None:
            raise UserError("NOTFOUND", "no user {}".format(name))
        os.remove(self._path(name))
        self._apop_users = None

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
