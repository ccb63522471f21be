"""The self-managed certificate loop: the leader keeps both Secrets and the caBundles current.

Decisions are ``webhook.rotation.plan``; this module reads the Secrets, writes
what the plan changed, and keeps the webhook configurations' caBundle equal
to the plan's trust bundle. A bundle that grows is injected before the
Secrets are written (the API server must trust a CA before anything serves
from it); a bundle that shrinks, after.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from sortie_egress.admission.registration import MUTATING_NAME
from sortie_egress.certs.rotation import CertificateState, RotationPolicy, decode_state, encode_ca_secret, encode_serving_secret, plan

log = logging.getLogger("sortie.certificates")


def ca_fingerprints(bundle: bytes) -> set[bytes]:
    """The CAs of a PEM bundle, by fingerprint: what "trusted" is compared by."""
    return {ca.fingerprint(ca.signature_hash_algorithm) for ca in x509.load_pem_x509_certificates(bundle)}  # type: ignore[arg-type]


@dataclass
class CertificateManager:
    core: Any  # kubernetes.client.CoreV1Api
    admission: Any  # kubernetes.client.AdmissionregistrationV1Api
    policy: RotationPolicy
    namespace: str = "sortie-system"
    ca_secret: str = "sortie-egress-ca"
    serving_secret: str = "sortie-egress-tls"
    mutating: str = MUTATING_NAME
    rotations: int = 0

    # --- Secrets ------------------------------------------------------------

    def _read_secret(self, name: str) -> tuple[dict[str, bytes] | None, str | None]:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = json.loads(self.core.read_namespaced_secret(name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        return data, secret["metadata"]["resourceVersion"]

    def _write_secret(self, name: str, data: dict[str, bytes], version: str | None, kind: str) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "type": kind,
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "sortie-egress"}},
                "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}
        if version is None:
            self.core.create_namespaced_secret(self.namespace, body, _preload_content=False)
        else:
            body["metadata"]["resourceVersion"] = version  # a concurrent writer makes this fail, not interleave
            self.core.replace_namespaced_secret(name, self.namespace, body, _preload_content=False)

    # --- caBundle -------------------------------------------------------------

    def _read_configurations(self) -> list[tuple[str, Any, list[dict[str, Any]]]]:
        """Our webhook configurations (name, patch call, webhooks), read once per round."""
        found = []
        for read, patch, name in (
            (self.admission.read_mutating_webhook_configuration, self.admission.patch_mutating_webhook_configuration, self.mutating),
        ):
            config = json.loads(read(name, _preload_content=False).data)
            found.append((name, patch, config.get("webhooks") or []))
        return found

    @staticmethod
    def _trusted_everywhere(configurations: list[tuple[str, Any, list[dict[str, Any]]]]) -> set[bytes]:
        """The CAs that every webhook of every configuration trusts: a CA missing from any one
        of them is not yet trusted for the purpose of serving from it."""
        trusted: set[bytes] | None = None
        for _, _, webhooks in configurations:
            for hook in webhooks:
                value = hook.get("clientConfig", {}).get("caBundle")
                fingerprints = ca_fingerprints(base64.b64decode(value)) if value else set()
                trusted = fingerprints if trusted is None else trusted & fingerprints
        return trusted or set()

    def _inject(self, bundle: bytes, configurations: list[tuple[str, Any, list[dict[str, Any]]]]) -> None:
        """Patch every caBundle that differs, guarded by test operations on what was read: a
        configuration changed since (re-applied, reordered) fails the patch and the next
        round reads it again, instead of this one overwriting it blind."""
        encoded = base64.b64encode(bundle).decode()
        for name, patch, webhooks in configurations:
            ops: list[dict[str, Any]] = []
            for index, hook in enumerate(webhooks):
                current = hook.get("clientConfig", {}).get("caBundle")
                if current == encoded:
                    continue
                path = f"/webhooks/{index}"
                ops.append({"op": "test", "path": f"{path}/name", "value": hook.get("name")})
                if current is None:
                    ops.append({"op": "add", "path": f"{path}/clientConfig/caBundle", "value": encoded})
                else:
                    ops.append({"op": "test", "path": f"{path}/clientConfig/caBundle", "value": current})
                    ops.append({"op": "replace", "path": f"{path}/clientConfig/caBundle", "value": encoded})
            if ops:
                patch(name, ops, _preload_content=False)
                log.info("caBundle of %s updated (%d CA(s))", name, len(x509.load_pem_x509_certificates(bundle)))

    # --- one round --------------------------------------------------------------

    def reconcile(self, now: dt.datetime | None = None) -> tuple[str, ...]:
        now = now or dt.datetime.now(dt.timezone.utc)
        ca_data, ca_version = self._read_secret(self.ca_secret)
        serving_data, serving_version = self._read_secret(self.serving_secret)
        state: CertificateState = plan(decode_state(ca_data, serving_data), self.policy, now)
        bundle = state.trust_bundle()
        wanted = ca_fingerprints(bundle)
        configurations = self._read_configurations()
        grows = not wanted <= self._trusted_everywhere(configurations)
        if grows:
            self._inject(bundle, configurations)
        if state.changes:
            self._write_secret(self.ca_secret, encode_ca_secret(state), ca_version, "Opaque")
            self._write_secret(self.serving_secret, encode_serving_secret(state), serving_version, "kubernetes.io/tls")
            self.rotations += 1
            log.info("certificates: %s", "; ".join(state.changes))
        if not grows:
            self._inject(bundle, configurations)
        return state.changes

    def run(self, stop: threading.Event, leading: threading.Event | None, interval: float) -> None:
        while not stop.is_set():
            if leading is None or leading.is_set():
                try:
                    self.reconcile()
                except Exception as exc:  # the API server away, a conflict with a second writer: next round
                    log.warning("certificate round failed: %s", exc)
            stop.wait(interval)
