"""Self-managed webhook certificates: what the Secrets should hold next. Pure.

The API server trusts whatever caBundle the webhook configurations carry, and
webhook replicas serve whatever the serving Secret holds; neither changes
everywhere at the same instant. So a CA is never switched in one step:

1. a new CA is made *pending*: it joins the trust bundle, nothing signs with it;
2. after ``overlap`` (the bundle has reached the API server by then), it becomes
   active and a new serving certificate is issued from it; the old CA is *retired*
   but stays in the bundle for another ``overlap``, while replicas still serve
   the previous certificate;
3. then the retired CA leaves the bundle.

Serving certificates are renewed from the active CA when a third of their
lifetime is left. At every step the bundle holds the CA of every certificate
any replica may still be serving.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sortie_egress.certs.authority import Authority, load_authority

RENEW_FRACTION = 1 / 3


@dataclass(frozen=True)
class RotationPolicy:
    hosts: tuple[str, ...]
    ca_lifetime: dt.timedelta = dt.timedelta(days=365)
    serving_lifetime: dt.timedelta = dt.timedelta(days=30)
    overlap: dt.timedelta = dt.timedelta(minutes=2)


@dataclass(frozen=True)
class Retired:
    cert_pem: bytes
    until: dt.datetime


@dataclass(frozen=True)
class CertificateState:
    """Everything both Secrets hold; ``None`` fields are absent."""

    active: Authority | None = None
    pending: Authority | None = None
    pending_since: dt.datetime | None = None
    retired: tuple[Retired, ...] = ()
    serving_cert_pem: bytes | None = None
    serving_key_pem: bytes | None = None
    changes: tuple[str, ...] = field(default=(), compare=False)

    def trust_bundle(self) -> bytes:
        """Active, pending and retired CAs: every CA a replica may be serving from."""
        pems = [ca.pem for ca in (self.active, self.pending) if ca is not None]
        pems += [retired.cert_pem for retired in self.retired]
        return b"".join(pems)


def _remaining(cert: x509.Certificate, now: dt.datetime) -> dt.timedelta:
    return cert.not_valid_after_utc - now


def _due(cert: x509.Certificate, now: dt.datetime, lifetime: dt.timedelta) -> bool:
    # The policy's lifetime, not the certificate's span: certificates are
    # backdated a little for clock skew, which would skew short lifetimes.
    return _remaining(cert, now) < lifetime * RENEW_FRACTION


def _serving_needs_renewal(state: CertificateState, policy: RotationPolicy, now: dt.datetime) -> str | None:
    if state.serving_cert_pem is None or state.serving_key_pem is None or state.active is None:
        return "no serving certificate"
    try:
        cert = x509.load_pem_x509_certificate(state.serving_cert_pem)
    except ValueError:
        return "unreadable serving certificate"
    try:
        cert.verify_directly_issued_by(state.active.cert)
    except (InvalidSignature, ValueError, TypeError):  # every CA here has the same name: the signature decides
        return "serving certificate not from the active CA"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(value) for value in names.get_values_for_type(x509.DNSName)}
    have |= {str(value) for value in names.get_values_for_type(x509.IPAddress)}
    if have != set(policy.hosts):
        return "serving certificate names changed"
    if _due(cert, now, policy.serving_lifetime):
        return "serving certificate due for renewal"
    return None


def plan(state: CertificateState, policy: RotationPolicy, now: dt.datetime) -> CertificateState:
    """The next state; ``changes`` says what moved (empty: write nothing)."""
    changes: list[str] = []
    retired = tuple(r for r in state.retired if r.until > now)
    if len(retired) != len(state.retired):
        changes.append("retired CA dropped from the bundle")
    active, pending, pending_since = state.active, state.pending, state.pending_since
    if active is None:
        active = Authority.create("sortie-egress webhook CA", policy.ca_lifetime, now)
        pending, pending_since = None, None
        changes.append("CA created")
    elif pending is not None and pending_since is not None and now - pending_since >= policy.overlap:
        retired += (Retired(active.pem, now + policy.overlap),)
        active, pending, pending_since = pending, None, None
        changes.append("pending CA activated")
    elif pending is None and _due(active.cert, now, policy.ca_lifetime):
        pending = Authority.create("sortie-egress webhook CA", policy.ca_lifetime, now)
        pending_since = now
        changes.append("new CA pending")
    next_state = replace(state, active=active, pending=pending, pending_since=pending_since, retired=retired)
    reason = _serving_needs_renewal(next_state, policy, now)
    if reason:
        assert active is not None
        cert_pem, key_pem = active.issue(policy.hosts[0], policy.serving_lifetime, hosts=policy.hosts, now=now)
        next_state = replace(next_state, serving_cert_pem=cert_pem, serving_key_pem=key_pem)
        changes.append(f"serving certificate issued ({reason})")
    return replace(next_state, changes=tuple(changes))


# --- to and from Secret data (bytes by key) -------------------------------------

def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat()


def encode_ca_secret(state: CertificateState) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    if state.active is not None:
        data["ca.crt"], data["ca.key"] = state.active.pem, state.active.key_pem
    if state.pending is not None:
        data["pending-ca.crt"], data["pending-ca.key"] = state.pending.pem, state.pending.key_pem
    meta = {
        "pending_since": _iso(state.pending_since) if state.pending_since else None,
        "retired": [{"cert": r.cert_pem.decode(), "until": _iso(r.until)} for r in state.retired],
    }
    data["state.json"] = json.dumps(meta, sort_keys=True).encode()
    return data


def encode_serving_secret(state: CertificateState) -> dict[str, bytes]:
    assert state.serving_cert_pem is not None and state.serving_key_pem is not None
    return {"tls.crt": state.serving_cert_pem, "tls.key": state.serving_key_pem, "ca.crt": state.trust_bundle()}


def decode_state(ca_data: dict[str, bytes] | None, serving_data: dict[str, bytes] | None) -> CertificateState:
    """Whatever is unreadable is treated as absent, and so made again."""
    ca_data, serving_data = ca_data or {}, serving_data or {}
    active = load_authority(ca_data.get("ca.crt"), ca_data.get("ca.key"))
    pending = load_authority(ca_data.get("pending-ca.crt"), ca_data.get("pending-ca.key"))
    pending_since = None
    retired: tuple[Retired, ...] = ()
    try:
        meta = json.loads(ca_data.get("state.json") or b"{}")
        if meta.get("pending_since"):
            pending_since = dt.datetime.fromisoformat(meta["pending_since"])
        retired = tuple(Retired(item["cert"].encode(), dt.datetime.fromisoformat(item["until"]))
                        for item in meta.get("retired") or [])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if pending is not None and pending_since is None:
        pending_since = dt.datetime.now(dt.timezone.utc)
    return CertificateState(active=active, pending=pending, pending_since=pending_since, retired=retired,
                            serving_cert_pem=serving_data.get("tls.crt"), serving_key_pem=serving_data.get("tls.key"))

