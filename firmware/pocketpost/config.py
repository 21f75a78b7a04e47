# The appliance's settings as the firmware reads them: one value per key, worked out at boot from
# the schema's defaults (config_schema.py), the board's defaults, what `config set` stored (one
# JSON file on internal flash) and the board's overrides (the unix board's command line, for one
# run). The schema and its validation are loaded only to read the stored file and to change or
# show a setting, so they take no heap while the board serves.
import json
import os

from . import unload

_HOST_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-."


def valid_domain(name):
    """A DNS name: labels of 1-63 letters, digits and hyphens, 255 octets at most."""
    if not 0 < len(name) <= 255:
        return False
    for label in name.split("."):
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if c not in _HOST_CHARS:
                return False
    return True


class Config:
    """The settings: the board's command-line overrides, then what `config set` stored, then
    the board's own defaults (`board_defaults`), then the schema's."""

    def __init__(self, root, overrides=None, board_defaults=None):
        from . import config_schema

        self.path = root + "/config.json"
        self.overrides = overrides or {}
        self.stored = {}
        try:
            try:
                with open(self.path) as f:
                    stored = json.load(f)
                for key, value in stored.items():
                    if key in config_schema.SCHEMA:
                        self.stored[key] = config_schema.check(key, value)
            except (OSError, ValueError):
                pass  # no file yet, or a damaged one: defaults apply (`config set` writes it anew)
            self.values = {}
            for key, entry in config_schema.SCHEMA.items():
                self.values[key] = entry[0]
        finally:
            config_schema = None
            unload("pocketpost.config_schema")
        self.values.update(board_defaults or {})
        self.values.update(self.stored)
        self.values.update(self.overrides)

    def __getitem__(self, key):
        return self.values[key]

    def set(self, key, value, schema):
        """Validates and stores one key (`schema`: the config_schema module, loaded by the
        caller); returns (stored value, when it takes effect)."""
        if key not in schema.SCHEMA:
            raise KeyError("unknown key {}; known: {}".format(key, ", ".join(sorted(schema.SCHEMA))))
        value = schema.check(key, value)
        self.stored[key] = value
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            json.dump(self.stored, f)
        os.rename(tmp, self.path)
        if key not in self.overrides:
            self.values[key] = value
        return value, schema.SCHEMA[key][4]
