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

from sortie_egress.constants import SERVICE_NAME

def service_hosts(namespace: str) -> tuple[str, ...]:
    """The names the API server (and anything in the cluster) may reach the webhook Service by."""
    return (f"{SERVICE_NAME}.{namespace}.svc", f"{SERVICE_NAME}.{namespace}", SERVICE_NAME)


DEFAULT_HOSTS = (*service_hosts("sortie-system"), "localhost", "127.0.0.1", "::1")
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


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


@dataclass(frozen=True)
class Authority:
    """A CA that can issue more than one certificate (the test control plane needs many)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    @classmethod
    def create(cls, common_name: str, lifetime: dt.timedelta, now: dt.datetime | None = None) -> Authority:
        now = now or dt.datetime.now(dt.timezone.utc)
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(
        self,
        common_name: str,
        lifetime: dt.timedelta,
        hosts: list[str] | tuple[str, ...] = (),
        organizations: tuple[str, ...] = (),
        client: bool = False,
        now: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM): a serving certificate for ``hosts``, or a
        client one (Kubernetes reads the user from CN and groups from O)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        key = _key()
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts or not client:
            builder = builder.add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def load_authority(cert_pem: bytes | None, key_pem: bytes | None) -> Authority | None:
    """An Authority from PEM, or None when either part is missing, unreadable or they do not match."""
    if not cert_pem or not key_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return Authority(key=key, cert=cert)


def generate(
    hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
    serving_lifetime: dt.timedelta = dt.timedelta(days=SERVING_DAYS),
    ca_lifetime: dt.timedelta = dt.timedelta(days=CA_DAYS),
    now: dt.datetime | None = None,
) -> CertificateSet:
    """A fresh CA and a serving certificate (ECDSA P-256) for ``hosts``."""
    _subject_names(hosts)  # fail before making keys
    authority = Authority.create("sortie-egress webhook CA", ca_lifetime, now)
    names = [host.strip() for host in hosts if host.strip()]
    cert_pem, key_pem = authority.issue(names[0], serving_lifetime, hosts=names, now=now)
    return CertificateSet(ca_pem=authority.pem, cert_pem=cert_pem, key_pem=key_pem)


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
