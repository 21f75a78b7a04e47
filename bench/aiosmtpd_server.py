"""aiosmtpd as `make bench` runs it: in its own process (so its RSS and CPU are its own), with
the tests' Maildir handler (tests/reference_servers.py), which writes each message to a file in
tmp/ and renames it into new/. Prints "ready" once listening; SIGTERM stops it.

    python bench/aiosmtpd_server.py PORT MAILDIR USER DOMAIN
"""

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_servers import LongLineController, MaildirDelivery  # noqa: E402


def main(argv):
    port, maildir, user, domain = argv
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller = LongLineController(
        MaildirDelivery(maildir, user, domain, None), hostname="127.0.0.1", port=int(port), server_hostname=domain
    )
    controller.start()
    try:
        print("ready", flush=True)
        while not stop.wait(1):
            pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
