# Console requests for the settings: config.get, config.set.
from ..config import SCHEMA
from ..console import RequestError, Streamed, arg


def config_get(app, args):
    key = arg(args, "key", str, False)
    config = app.config
    if key is None:
        # One part per key, {key: value}; the host merges them into one object again.
        return Streamed("config", ({k: config.shown(k)} for k in SCHEMA), {"overridden": sorted(config.overrides), "object": True})
    if key not in SCHEMA:
        raise RequestError("INVALID", "unknown key {}; known: {}".format(key, ", ".join(sorted(SCHEMA))))
    return {"key": key, "value": config.shown(key), "overridden": key in config.overrides}


def config_set(app, args):
    key = arg(args, "key", str)
    if "value" not in args:
        raise RequestError("INVALID", "missing argument value")
    config = app.config
    try:
        value, applies = config.set(key, args["value"])
    except KeyError as e:
        raise RequestError("INVALID", e.args[0])
    except ValueError as e:
        raise RequestError("INVALID", "{}: {}".format(key, e))
    if SCHEMA[key][5]:
        value = "********"
    app.log.info("console", "config {} set".format(key))
    return {"key": key, "value": value, "applies": applies, "overridden": key in config.overrides}
