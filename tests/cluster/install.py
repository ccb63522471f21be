"""Our product installed the way users install it: ``kubectl apply -k`` of an overlay that only
swaps the image reference; everything else is the shipped manifests (self-managed certificates).

The overlay is written to a folder of the caller's (it names ``manifests/`` by a relative path,
as an operator's overlay names ours), so what runs is exactly what ``kubectl kustomize`` of
``manifests/`` gives, with our locally built image in place of ``sortie-egress:0.1.0``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .harness import ControlPlane, wait_for

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SYSTEM_NAMESPACE = "sortie-system"
SHIPPED_IMAGE = "sortie-egress"
DEPLOYMENTS = ("sortie-egress-webhook", "sortie-egress-controller")
MUTATING_CONFIGURATION = "sortie-egress"


def write_overlay(folder: Path, image: str, backend: str = "networkpolicy", wait_mode: str = "required",
                  dataplane: str = "kube-router") -> Path:
    """An operator's overlay of ``manifests/`` (or, for another backend, of the shipped example
    that installs it, ``manifests/examples/<backend>``, ``<backend>-auto`` with enforcementWait
    auto, ``cilium-<backend>`` where the dataplane is Cilium and such an example exists) that sets
    only the image."""
    name, tag = image.rsplit(":", 1)
    example = backend if wait_mode == "required" else f"{backend}-{wait_mode}"
    if dataplane == "cilium" and (MANIFESTS / "examples" / f"cilium-{example}").is_dir():
        example = f"cilium-{example}"
    base = MANIFESTS if example == "networkpolicy" else MANIFESTS / "examples" / example
    if not base.is_dir():
        raise ValueError(f"no shipped install for the {backend} backend ({base})")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(base, folder)],
        "images": [{"name": SHIPPED_IMAGE, "newName": name, "newTag": tag}],
    }))
    return folder


def _available(plane: ControlPlane, deployment: str) -> bool:
    result = plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "deployment", deployment, "-o", "json")
    if result.returncode != 0:
        return False
    status = json.loads(result.stdout).get("status", {})
    wanted = json.loads(result.stdout)["spec"].get("replicas", 1)
    return status.get("readyReplicas", 0) >= wanted and status.get("updatedReplicas", 0) >= wanted


def _ca_injected(plane: ControlPlane) -> bool:
    result = plane.kubectl("get", "mutatingwebhookconfiguration", MUTATING_CONFIGURATION, "-o",
                           "jsonpath={.webhooks[*].clientConfig.caBundle}")
    return result.returncode == 0 and bool(result.stdout.strip())


def install(plane: ControlPlane, overlay: Path, timeout: float = 180) -> float:
    """Apply the overlay and wait until both Deployments are Ready and the CA is injected.

    Returns the seconds it took. Raises with the pods' state and logs when it does not get there.
    """
    import time

    started = time.monotonic()
    result = plane.kubectl("apply", "-k", str(overlay), timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply -k {overlay} failed: {result.stderr}")
    try:
        for deployment in DEPLOYMENTS:
            wait_for(lambda deployment=deployment: _available(plane, deployment), timeout, f"{deployment} Ready")
        wait_for(lambda: _ca_injected(plane), 60, "the CA injected into the mutating webhook configuration")
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\n{diagnose(plane)}") from None
    return time.monotonic() - started


def switch_backend(plane: ControlPlane, folder: Path, image: str, backend: str, wait_mode: str = "required",
                   dataplane: str = "kube-router") -> Path:
    """What an operator does to change backends: ``kubectl apply -k`` of the backend's install
    (with ``wait_mode`` auto: the example with the enforcement-wait-auto component; on Cilium, its
    Cilium example where there is one), then wait until both Deployments have rolled out (no pod
    of the old settings left)."""
    overlay = write_overlay(folder, image, backend, wait_mode, dataplane)
    result = plane.kubectl("apply", "-k", str(overlay), timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply -k {overlay} failed: {result.stderr}")
    for deployment in DEPLOYMENTS:
        result = plane.kubectl("-n", SYSTEM_NAMESPACE, "rollout", "status", f"deployment/{deployment}", "--timeout=180s",
                               timeout=200)
        if result.returncode != 0:
            raise RuntimeError(f"{deployment} did not roll out with the {backend} backend: {result.stderr}\n{diagnose(plane)}")

    def only_new_pods() -> bool:
        pods = json.loads(plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
        ours = [p for p in pods if p["metadata"]["name"].startswith(tuple(f"{d}-" for d in DEPLOYMENTS))]
        envs = [{e["name"]: e.get("value") for e in c.get("env", [])} for p in ours for c in p["spec"]["containers"]]
        wanted = None if backend == "networkpolicy" else backend
        mode = None if wait_mode == "required" else wait_mode
        return all(env.get("SORTIE_EGRESS_BACKEND") == wanted and env.get("SORTIE_EGRESS_ENFORCEMENT_WAIT") == mode
                   for env in envs)

    wait_for(only_new_pods, 120, f"only pods with the {backend} backend in {SYSTEM_NAMESPACE}")
    return overlay


def diagnose(plane: ControlPlane) -> str:
    """The product's pods and the tail of their logs, for a failure message."""
    parts = [plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "wide").stdout]
    names = plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "name").stdout.split()
    for name in names:
        parts.append(f"--- {name}\n" + plane.kubectl("-n", SYSTEM_NAMESPACE, "logs", name, "--tail=20").stdout)
        parts.append(plane.kubectl("-n", SYSTEM_NAMESPACE, "describe", name).stdout[-1500:])
    return "\n".join(parts)


def uninstall(plane: ControlPlane, overlay: Path) -> None:
    """``kubectl delete -k`` of the same overlay, waiting for everything to be gone."""
    result = plane.kubectl("delete", "-k", str(overlay), "--wait=true", "--ignore-not-found", timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl delete -k {overlay} failed: {result.stderr}")
