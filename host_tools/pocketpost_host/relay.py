"""The board's relay: the CA certificates that verify its smarthost, and its queue of mail for
other domains (console requests relay.ca.* and queue.*, docs/console-protocol.md).

The board's TLS takes DER certificates only and its console carries at most 1 KB a line, so a
PEM bundle is split into its certificates here, each sent in base64 chunks and checked on the
board against its SHA-256 before the installed ones are replaced.
"""

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import PocketpostError

CHUNK = 700  # base64 characters per console line, as tls.py's
MAX_CA = 8  # certificates the board keeps


def ca_der_list(data: bytes) -> list[bytes]:
    """The certificates of a PEM bundle (or one DER certificate) as DER; raises PocketpostError
    when there are none, more than the board keeps, or one cannot be read."""
    try:
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise PocketpostError(f"the CA certificates cannot be read: {e}") from None
    if not 0 < len(certificates) <= MAX_CA:
        raise PocketpostError(f"a file of 1 to {MAX_CA} CA certificates is needed, not {len(certificates)}")
    return [c.public_bytes(serialization.Encoding.DER) for c in certificates]


def install_ca(board, data: bytes) -> dict:
    """Installs the CA certificates in `data` (PEM or DER) on the board (`board.request(command,
    args)`), replacing those installed; returns {"certificates": [what the board reads of each]}."""
    return install_ca_der(board, ca_der_list(data))


def install_ca_der(board, ders) -> dict:
    """Installs the DER certificates `ders` (1 to MAX_CA), as install_ca."""
    board.request("relay.ca.begin", {})
    for index, der in enumerate(ders):
        text = base64.b64encode(der).decode()
        for i in range(0, len(text), CHUNK):
            board.request("relay.ca.chunk", {"index": index, "data": text[i : i + CHUNK]})
    return board.request("relay.ca.commit", {"sha256": [hashlib.sha256(d).hexdigest() for d in ders]})


def show_ca(board) -> list[dict]:
    return board.request("relay.ca.show", {})["certificates"]


def queue_list(board) -> list[dict]:
    """The queued messages: id, from, size, recipients, pending, tries, age_s, next_s, error."""
    return board.request("queue.list", {})["messages"]


def queue_show(board, qid: str) -> dict:
    return board.request("queue.show", {"id": qid})


def queue_flush(board) -> int:
    """Makes every queued message due now; returns how many were waiting."""
    return board.request("queue.flush", {})["messages"]


def queue_delete(board, qid: str) -> str:
    return board.request("queue.delete", {"id": qid})["id"]
