"""Certificates for the board's TLS: a self-signed certificate made on the host, and its
installation over the console.

The board's MicroPython ssl takes DER only (PEM keys fail with "invalid key"), so certificates
and keys are converted here. The console carries at most 1 KB a line, so the files go in base64
chunks (`tls.begin`, `tls.chunk`, `tls.commit` with their SHA-256); the board checks the digests
and loads them into a TLS context before replacing the old ones. The key never leaves the board
again: `tls.show` reports the certificate only.
"""

import base64
import datetime
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .errors import PocketpostError

# Base64 characters per console line: well within the board's 1,024-octet request limit.
CHUNK = 700
DEFAULT_DAYS = 825  # the longest validity Apple's clients accept for a server certificate


def generate(hostname: str, days: int = DEFAULT_DAYS, key_type: str = "ec") -> tuple[bytes, bytes]:
    """A new key and a self-signed certificate for `hostname` (also valid for it as an IP
    address when it is one); returns (certificate PEM, key PEM). EC P-256 keys are the default:
    a handshake with them costs an ESP32 far less than RSA."""
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise PocketpostError(f"key type must be ec or rsa, not {key_type!r}")
    try:
        names = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        names = [x509.DNSName(hostname)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=key_type == "rsa", key_cert_sign=True,
                content_commitment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def to_der(cert_data: bytes, key_data: bytes) -> tuple[bytes, bytes]:
    """The certificate and key (PEM or DER files' contents) as DER, after checking that the key
    belongs to the certificate; raises PocketpostError saying what is wrong."""
    try:
        certificate = (
            x509.load_pem_x509_certificate(cert_data) if b"-----BEGIN" in cert_data else x509.load_der_x509_certificate(cert_data)
        )
    except ValueError as e:
        raise PocketpostError(f"the certificate cannot be read: {e}") from None
    try:
        if b"-----BEGIN" in key_data:
            key = serialization.load_pem_private_key(key_data, password=None)
        else:
            key = serialization.load_der_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise PocketpostError(f"the key cannot be read (it must not be encrypted): {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PocketpostError("the key must be an EC or RSA key")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise PocketpostError("the key does not belong to the certificate")
    return (
        certificate.public_bytes(serialization.Encoding.DER),
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def install(board, cert_der: bytes, key_der: bytes, progress=None) -> dict:
    """Sends the DER certificate and key to the board (`board.request(command, args)`); returns
    what `tls.show` reports of the installed certificate, with "applies": "now" when new TLS
    sessions use it at once, "reboot" when it loads at the board's next start (the board had no
    heap to build a context right now)."""
    board.request("tls.begin", {})
    total = sum((len(d) + 2) // 3 * 4 for d in (cert_der, key_der))
    sent = 0
    for name, data in (("cert", cert_der), ("key", key_der)):
        text = base64.b64encode(data).decode()
        for i in range(0, len(text), CHUNK):
            board.request("tls.chunk", {"file": name, "data": text[i : i + CHUNK]})
            sent += len(text[i : i + CHUNK])
            if progress:
                progress(sent, total)
    return board.request(
        "tls.commit",
        {"cert_sha256": hashlib.sha256(cert_der).hexdigest(), "key_sha256": hashlib.sha256(key_der).hexdigest()},
    )


def fingerprint(cert_der: bytes) -> str:
    """The certificate's SHA-256 fingerprint as the board shows it (hex pairs with colons)."""
    return hashlib.sha256(cert_der).digest().hex(":")


# The attribute labels the board's tls.show prints (firmware/pocketpost/x509.py).
_NAME_LABELS = {"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU"}


def describe(cert_der: bytes) -> dict:
    """What the board's `tls.show` reports of `cert_der` once installed, in its format:
    {subject, issuer, not_before, not_after, key, sha256}."""
    certificate = x509.load_der_x509_certificate(cert_der)

    def name(value):
        parts = []
        for rdn in value.rdns:
            attribute = next(iter(rdn))  # the board reads the first of each set
            text = attribute.value if isinstance(attribute.value, str) else attribute.value.decode("utf-8", "replace")
            parts.append(f"{_NAME_LABELS.get(attribute.oid.dotted_string, 'OID')}={text}")
        return ", ".join(parts)

    key = certificate.public_key()
    kind = "EC" if isinstance(key, ec.EllipticCurvePublicKey) else "RSA" if isinstance(key, rsa.RSAPublicKey) else "other"
    return {
        "subject": name(certificate.subject),
        "issuer": name(certificate.issuer),
        "not_before": certificate.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": kind,
        "sha256": fingerprint(cert_der),
    }
