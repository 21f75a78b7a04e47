"""Host tools for pocketpost: simulator, provisioning over the serial console, protocol checks."""

__version__ = "0.1.0"
