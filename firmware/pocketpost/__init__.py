# pocketpost: a POP3 and SMTP mail appliance for MicroPython boards.
import sys

VERSION = "0.1.0"


def unload(name):
    """Forgets module `name` (imported for one job: the boot check, a console request), so the
    heap its code takes is freed. The package keeps a reference too, which goes as well.

    The entry is written before it is removed: where an import was cut short (a shortage),
    MicroPython takes the module out of sys.modules but leaves it in the table's slot, where
    the collector still sees it, until another entry lands there (at 160k a half-loaded
    request's code, ~7 KB, stayed so through the console requests after it)."""
    modules = sys.modules
    try:
        modules[name] = None  # (a dict's pop clears the slot's value, the runtime's removal does not)
    except MemoryError:
        pass  # a table that must grow for it: the slot stays until an entry lands there
    modules.pop(name, None)
    try:
        package, _, attribute = name.rpartition(".")
        delattr(sys.modules[package], attribute)
    except MemoryError:  # (caught alone: a tuple of classes would need heap itself)
        pass  # the package's reference goes when the module is loaded again
    except KeyError:
        pass
    except AttributeError:
        pass
