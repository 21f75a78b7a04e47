# pocketpost: a POP3 and SMTP mail appliance for MicroPython boards.
import sys

VERSION = "0.1.0"


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
