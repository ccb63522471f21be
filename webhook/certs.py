"""A private CA and a serving certificate for the webhook (``cryptography``).

The API server verifies the webhook against ``caBundle`` and the certificate's
subjectAltNames (never its CN), so every name the webhook is dialled by must
be a SAN. Files are written atomically (temp file, then rename), so a server
watching them never reads half a rotation.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .constants import DEFAULT_SERVICE_HOST

DEFAULT_HOSTS = (
    DEFAULT_SERVICE_HOST,
    "sortie-egress.sortie-system",
    "sortie-egress",
    "localhost",
    "127.0.0.1",
    "::1",
)
CA_DAYS = 3650
SERVING_DAYS = 365
# Clocks in a cluster disagree a little; a certificate is valid from a bit before now.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertificateSet:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def ca_bundle(self) -> str:
        """What goes into a webhook configuration's ``caBundle``."""
        return base64.b64encode(self.ca_pem).decode("ascii")


def _subject_names(hosts: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ValueError("at least one host name or IP address is needed for the certificate")
    return names


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def generate(
    hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
    serving_lifetime: dt.timedelta = dt.timedelta(days=SERVING_DAYS),
    ca_lifetime: dt.timedelta = dt.timedelta(days=CA_DAYS),
    now: dt.datetime | None = None,
) -> CertificateSet:
    """A fresh CA and a serving certificate (ECDSA P-256) for ``hosts``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    names = _subject_names(hosts)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sortie-egress webhook CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ca_lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = _key()
    first = names[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + serving_lifetime)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertificateSet(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_pem_key(key),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write(certs: CertificateSet, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """ca.crt, tls.crt, tls.key (0600) in ``out_dir``; the key first, so a watcher
    that sees the new certificate finds its key already there."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ca": folder / "ca.crt", "cert": folder / "tls.crt", "key": folder / "tls.key"}
    _write_atomic(paths["key"], certs.key_pem, 0o600)
    _write_atomic(paths["cert"], certs.cert_pem, 0o644)
    _write_atomic(paths["ca"], certs.ca_pem, 0o644)
    return paths


def remaining_validity(cert_file: str | os.PathLike[str], now: dt.datetime | None = None) -> dt.timedelta:
    """How long the certificate in ``cert_file`` stays valid (negative when expired)."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return cert.not_valid_after_utc - (now or dt.datetime.now(dt.timezone.utc))
