"""Certificate rotation plans: simulated over many lifetimes, the trust invariant never breaks."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from sortie_egress.certs.rotation import CertificateState, RotationPolicy, decode_state, encode_ca_secret, encode_serving_secret, plan

POLICY = RotationPolicy(hosts=("127.0.0.1", "sortie-egress.sortie-system.svc"), ca_lifetime=dt.timedelta(seconds=90),
                        serving_lifetime=dt.timedelta(seconds=30), overlap=dt.timedelta(seconds=6))
START = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def _trusted(serving_pem: bytes, bundle: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(serving_pem)
    for ca in x509.load_pem_x509_certificates(bundle):
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:
            continue
    return False


def _store(state: CertificateState) -> CertificateState:
    """Through the Secrets' encoding, as the controller does between rounds."""
    return decode_state(encode_ca_secret(state), encode_serving_secret(state))


def test_first_plan_creates_everything() -> None:
    state = plan(CertificateState(), POLICY, START)
    assert state.changes[0] == "CA created" and "serving certificate issued" in state.changes[1]
    assert _trusted(state.serving_cert_pem, state.trust_bundle())
    assert plan(_store(state), POLICY, START + dt.timedelta(seconds=1)).changes == ()


def test_many_lifetimes_without_a_gap_in_trust() -> None:
    state = CertificateState()
    previous_serving: bytes | None = None
    seen: list[str] = []
    for second in range(0, 600, 2):
        now = START + dt.timedelta(seconds=second)
        state = _store(plan(state, POLICY, now))
        bundle = state.trust_bundle()
        assert _trusted(state.serving_cert_pem, bundle), f"current serving certificate untrusted at {second} s"
        if previous_serving is not None:
            # A replica that has not reloaded yet still serves the previous one.
            assert _trusted(previous_serving, bundle), f"previous serving certificate untrusted at {second} s"
        assert x509.load_pem_x509_certificate(state.serving_cert_pem).not_valid_after_utc > now
        previous_serving = state.serving_cert_pem
        seen += plan(state, POLICY, now).changes
    rounds = []
    state = CertificateState()
    for second in range(0, 600, 2):
        state = plan(state, POLICY, START + dt.timedelta(seconds=second))
        rounds += state.changes
        state = _store(state)
    assert sum("serving certificate issued" in change for change in rounds) >= 20
    assert rounds.count("new CA pending") >= 5 and rounds.count("pending CA activated") >= 5
    assert rounds.count("retired CA dropped from the bundle") >= 4
    assert seen == []  # a plan right after a stored plan changes nothing


def test_bundle_holds_old_and_new_ca_while_switching() -> None:
    state = _store(plan(CertificateState(), POLICY, START))
    due = START + dt.timedelta(seconds=61)  # under a third of 90 s left
    pending = _store(plan(state, POLICY, due))
    assert len(x509.load_pem_x509_certificates(pending.trust_bundle())) == 2
    assert pending.serving_cert_pem == state.serving_cert_pem or _trusted(pending.serving_cert_pem, state.active.pem)
    switched = plan(pending, POLICY, due + POLICY.overlap)
    assert "pending CA activated" in switched.changes
    assert _trusted(switched.serving_cert_pem, pending.pending.pem)
    assert len(x509.load_pem_x509_certificates(switched.trust_bundle())) == 2
    dropped = plan(_store(switched), POLICY, due + POLICY.overlap * 2 + dt.timedelta(seconds=1))
    assert "retired CA dropped from the bundle" in dropped.changes
    assert len(x509.load_pem_x509_certificates(dropped.trust_bundle())) == 1


def test_unreadable_secrets_are_made_again() -> None:
    state = decode_state({"ca.crt": b"garbage", "ca.key": b"x", "state.json": b"{"}, {"tls.crt": b"nope"})
    fresh = plan(state, POLICY, START)
    assert fresh.changes[0] == "CA created" and _trusted(fresh.serving_cert_pem, fresh.trust_bundle())


def test_changed_hosts_reissue_the_serving_certificate() -> None:
    state = _store(plan(CertificateState(), POLICY, START))
    other = RotationPolicy(hosts=("other.svc",), ca_lifetime=POLICY.ca_lifetime,
                           serving_lifetime=POLICY.serving_lifetime, overlap=POLICY.overlap)
    assert plan(state, other, START).changes == ("serving certificate issued (serving certificate names changed)",)


def test_a_ca_counts_as_trusted_only_when_every_webhook_of_both_configurations_has_it() -> None:
    """Serving from a CA one webhook lacks would fail that webhook's calls: it must be injected first."""
    import base64

    from sortie_egress.certs.authority import Authority
    from sortie_egress.controller.certificates import CertificateManager

    old, new = (Authority.create(name, dt.timedelta(days=1)) for name in ("old-ca", "new-ca"))

    def hook(*cas: Authority) -> dict:
        bundle = b"".join(ca.pem for ca in cas)
        return {"name": "h", "clientConfig": {"caBundle": base64.b64encode(bundle).decode()} if cas else {}}

    def fingerprint(ca: Authority) -> bytes:
        certificate = x509.load_pem_x509_certificate(ca.pem)
        return certificate.fingerprint(certificate.signature_hash_algorithm)  # type: ignore[arg-type]

    trusted = CertificateManager._trusted_everywhere
    both = [("m", None, [hook(old, new), hook(old, new)]), ("v", None, [hook(old, new)])]
    assert trusted(both) == {fingerprint(old), fingerprint(new)}
    lagging = [("m", None, [hook(old, new)]), ("v", None, [hook(old)])]
    assert trusted(lagging) == {fingerprint(old)}
    stripped = [("m", None, [hook(old, new)]), ("v", None, [hook()])]
    assert trusted(stripped) == set()
    assert trusted([("m", None, []), ("v", None, [])]) == set()
