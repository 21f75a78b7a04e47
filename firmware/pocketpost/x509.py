# What `tls.show` tells of the installed certificate: subject, issuer, validity, key type and
# SHA-256 fingerprint, read from its DER (X.509, RFC 5280) with a minimal walker. Loaded for the
# console request and dropped after it.
import binascii
import hashlib

# Attribute type OIDs (DER contents) of the names we print.
_NAMES = {
    b"\x55\x04\x03": "CN",
    b"\x55\x04\x06": "C",
    b"\x55\x04\x07": "L",
    b"\x55\x04\x08": "ST",
    b"\x55\x04\x0a": "O",
    b"\x55\x04\x0b": "OU",
}
_KEY_TYPES = {
    b"\x2a\x86\x48\xce\x3d\x02\x01": "EC",
    b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01": "RSA",
}


def _element(der, i):
    """(tag, start, end) of the value of the DER element at offset i."""
    tag = der[i]
    length = der[i + 1]
    i += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[i : i + count], "big")
        i += count
    if i + length > len(der):
        raise ValueError("truncated DER")
    return tag, i, i + length


def _name(der, start, end):
    # Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }
    parts = []
    while start < end:
        _, set_start, set_end = _element(der, start)
        _, seq_start, _ = _element(der, set_start)
        _, oid_start, oid_end = _element(der, seq_start)
        _, value_start, value_end = _element(der, oid_end)
        label = _NAMES.get(bytes(der[oid_start:oid_end]), "OID")
        parts.append("{}={}".format(label, str(der[value_start:value_end], "utf-8")))
        start = set_end
    return ", ".join(parts)


def _time(der, start):
    tag, value_start, value_end = _element(der, start)
    text = str(der[value_start:value_end], "ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    return "{}-{}-{}T{}:{}:{}Z".format(text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14])


def describe(der):
    """{subject, issuer, not_before, not_after, key, sha256} of a DER certificate."""
    _, cert_start, _ = _element(der, 0)
    _, i, _ = _element(der, cert_start)  # tbsCertificate
    tag, _, end = _element(der, i)
    if tag == 0xA0:  # [0] version
        i = end
    i = _element(der, i)[2]  # serialNumber
    i = _element(der, i)[2]  # signature
    _, start, end = _element(der, i)
    issuer = _name(der, start, end)
    _, start, i = _element(der, end)  # validity
    not_before = _time(der, start)
    not_after = _time(der, _element(der, start)[2])
    _, start, end = _element(der, i)
    subject = _name(der, start, end)
    _, key_start, _ = _element(der, end)  # subjectPublicKeyInfo
    _, algorithm_start, _ = _element(der, key_start)
    _, oid_start, oid_end = _element(der, algorithm_start)
    return {
        "subject": subject,
        "issuer": issuer,
        "not_before": not_before,
        "not_after": not_after,
        "key": _KEY_TYPES.get(bytes(der[oid_start:oid_end]), "other"),
        "sha256": binascii.hexlify(hashlib.sha256(der).digest(), ":").decode(),
    }
