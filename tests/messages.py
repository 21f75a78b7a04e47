"""Test messages."""

import hashlib

MB = 1024 * 1024


def big_message(size, seed=b"x"):
    """A message of about `size` octets of 76-character lines, some starting with a dot."""
    line_no = 0
    lines = [b"Subject: big " + seed, b""]
    total = 0
    while total < size:
        digest = hashlib.sha256(seed + str(line_no).encode()).hexdigest().encode()
        line = (b"." if line_no % 7 == 0 else b"") + (digest * 2)[:75]
        lines.append(line)
        total += len(line) + 2
        line_no += 1
    return b"\r\n".join(lines) + b"\r\n"


def stuff(message):
    """DATA content for a message ending in CRLF: dot-stuffed, with the end-of-data line."""
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
