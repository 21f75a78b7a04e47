"""`python -m pocketpost_host`: the `pocketpost` command line."""

import sys

from .cli import main

sys.exit(main())
