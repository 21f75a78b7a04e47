# pocketpost: a POP3 and SMTP mail appliance for MicroPython boards.
import sys

VERSION = "0.1.0"


def load(name, *parts):
    """Imports module `name` (with `parts`, the modules its import may load first) and returns
    it. Where a shortage cuts the import short, each is forgotten before the MemoryError goes
    on: older MicroPython releases keep a module cut short in sys.modules (its issue #967), and
    the next import finds it half made (a NameError where the step is tried again)."""
    try:
        __import__(name)
    except MemoryError:
        unload(name)
        for part in parts:
            unload(part)
        raise
    return sys.modules[name]


def unload(name):
    """Forgets module `name` (imported for one job: the boot check, a console request), so the
    heap its code takes is freed. The package keeps a reference too, which goes as well."""
    sys.modules.pop(name, None)
    try:
        package, _, attribute = name.rpartition(".")
        delattr(sys.modules[package], attribute)
    except MemoryError:  # (caught alone: a tuple of classes would need heap itself)
        pass  # the package's reference goes when the module is loaded again
    except KeyError:
        pass
    except AttributeError:
        pass
