"""What the webhook pins in every injected wait so that only our canary can vouch for enforcement.

The canary's open port serves the webhook's own serving certificate (the controller follows the
same Secret), so the pin is that Secret's ``ca.crt`` (every CA trusted for it, old and new during a
rotation) and the first DNS name of ``tls.crt``. A pod's creator can point the canary's *name*
anywhere (``hostAliases``, ``dnsPolicy: None``); what answers there cannot present a certificate for
that identity from those CAs without a key only our pods hold.

Pure: bytes in, the two strings for the wait's arguments out.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


@dataclass(frozen=True, slots=True)
class CanaryPin:
    ca_bundle: str  # the CAs' DER, concatenated, in base64: one argument, no PEM line breaks
    identity: str  # the DNS name the canary's certificate must carry


def pin_from(ca_pem: bytes, serving_cert_pem: bytes) -> CanaryPin:
    """The pin for a serving Secret's ``ca.crt`` and ``tls.crt``; ValueError saying what is missing."""
    try:
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise ValueError("ca.crt holds no PEM certificate: the canary cannot be pinned") from None
    try:
        serving = x509.load_pem_x509_certificates(serving_cert_pem)[0]
    except (ValueError, IndexError):
        raise ValueError("tls.crt holds no PEM certificate: the canary cannot be pinned") from None
    try:
        names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        raise ValueError("tls.crt carries no DNS name: the canary's identity cannot be pinned")
    der = b"".join(authority.public_bytes(Encoding.DER) for authority in authorities)
    return CanaryPin(base64.b64encode(der).decode("ascii"), names[0])


__all__ = ["CanaryPin", "pin_from"]
