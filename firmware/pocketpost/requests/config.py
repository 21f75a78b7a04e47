# Console requests for the settings: config.get, config.set. The schema (config_schema.py) is
# loaded with this module and unloaded with it after the request.
from .. import config_schema
from ..config_schema import SCHEMA
from . import RequestError, Streamed, arg


def _shown(config, key):
    # The value as the console shows it: a secret that is set reads "********".
    value = config[key]
    if SCHEMA[key][5] and value:
        return "********"
    return value


def config_get(app, args):
    key = arg(args, "key", str, False)
    config = app.config
    if key is None:
        # One part per key, {key: value}; the host merges them into one object again.
        return Streamed("config", ({k: _shown(config, k)} for k in SCHEMA), {"overridden": sorted(config.overrides), "object": True})
    if key not in SCHEMA:
        raise RequestError("INVALID", "unknown key {}; known: {}".format(key, ", ".join(sorted(SCHEMA))))
    return {"key": key, "value": _shown(config, key), "overridden": key in config.overrides}


def config_set(app, args):
    key = arg(args, "key", str)
    if "value" not in args:
        raise RequestError("INVALID", "missing argument value")
    config = app.config
    try:
        value, applies = config.set(key, args["value"], config_schema)
    except KeyError as e:
        raise RequestError("INVALID", e.args[0])
    except ValueError as e:
        raise RequestError("INVALID", "{}: {}".format(key, e))
    if SCHEMA[key][5]:
        value = "********"
    app.log.info("console", "config {} set".format(key))
    return {"key": key, "value": value, "applies": applies, "overridden": key in config.overrides}
