"""The start-up wait's init container through the real API server: one webhook call per session
start, and no API token in our container (CONTRACT §6; issue 13's count of round trips).

The API server re-invokes a webhook (reinvocationPolicy IfNeeded) when an in-tree plugin changes
the pod after it; the ServiceAccount plugin would, by mounting a token into the container we add.
Our container's token path is taken by an empty volume, so the plugin leaves it alone."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import WebhookProcess, control_plane_binaries, generate_certs, session_pod
from sortie_egress.admission.registration import mutating_configuration

pytestmark = pytest.mark.cluster

IMAGE = "registry.invalid/sortie-egress:1"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    control = ControlPlane(control_plane_binaries(), root=tmp_path / "plane", with_scheduler=False).start()
    yield control
    control.stop()


@pytest.fixture
def waiting_webhook(plane: ControlPlane, tmp_path: Path) -> Iterator[WebhookProcess]:
    ca_bundle = generate_certs(tmp_path)
    webhook = WebhookProcess(tmp_path, tmp_path / "webhook.log", extra_args=(
        "--enforcement-canary", "sortie-egress-canary.sortie-system.svc", "--enforcement-image", IMAGE)).start()
    from kubernetes import client

    with plane.admin.api_client() as api:
        client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
            mutating_configuration(url=webhook.url, ca_bundle=ca_bundle))
    yield webhook
    webhook.stop()


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts") or []}


@pytest.mark.parametrize("own_volumes", [False, True])
def test_one_call_per_session_start_and_no_token_in_the_wait(plane: ControlPlane, waiting_webhook: WebhookProcess,
                                                            own_volumes: bool, tmp_path: Path) -> None:
    from kubernetes import client

    core = client.CoreV1Api(plane.admin.api_client())
    core.create_namespace({"metadata": {"name": "sessions"}})
    wait_for(lambda: core.read_namespaced_service_account("default", "sessions"), 30, "the default ServiceAccount")
    probe = session_pod(policy={"mode": "allowlist"})
    wait_for(lambda: [c.name for c in core.create_namespaced_pod("sessions", probe, dry_run="All").spec.init_containers
                      or []] == ["sortie-egress-wait"], 30, "the webhook to be called")

    pod = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}, namespace="sessions")
    if own_volumes:
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    core.create_namespaced_pod("sessions", pod)
    stored = json.loads(core.read_namespaced_pod(pod["metadata"]["name"], "sessions", _preload_content=False).data)

    calls = [line for line in waiting_webhook.log_lines()
             if line.get("name") == pod["metadata"]["name"] and line.get("namespace") == "sessions"]
    assert [(line["operation"], line["endpoint"]) for line in calls] == [("CREATE", "mutate")], calls

    wait, app = stored["spec"]["initContainers"][0], stored["spec"]["containers"][0]
    assert wait["name"] == "sortie-egress-wait" and wait["image"] == IMAGE
    # Pinned to the canary's certificate: the serving pair's CA (ca.crt beside --tls-cert), as DER in
    # base64, and the certificate's first DNS name (`certs generate --hosts 127.0.0.1,localhost`).
    ca_der = ssl.PEM_cert_to_DER_cert((tmp_path / "ca.crt").read_text())
    assert wait["command"] == ["python", "-m", "sortie_egress.wait", "--canary", "sortie-egress-canary.sortie-system.svc",
                               "--port", "9445", "--timeout", "600", "--ca-bundle", base64.b64encode(ca_der).decode(),
                               "--identity", "localhost"]
    # Ours: the empty volume over the token path, nothing else; the app keeps its token (and its own volume).
    assert _mounts(wait) == {TOKEN_PATH: "sortie-egress-wait-no-token"}
    token_volume = _mounts(app)[TOKEN_PATH]
    assert token_volume.startswith("kube-api-access-")
    volumes = {volume["name"]: volume for volume in stored["spec"]["volumes"]}
    assert volumes["sortie-egress-wait-no-token"] == {"name": "sortie-egress-wait-no-token", "emptyDir": {"sizeLimit": "1Ki"}}
    assert "projected" in volumes[token_volume]
    assert sorted(volumes) == sorted(["sortie-egress-wait-no-token", token_volume] + (["data"] if own_volumes else []))
    if own_volumes:
        assert _mounts(app)["/data"] == "data"
