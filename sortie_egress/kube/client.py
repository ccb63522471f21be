"""API clients for the controller and the webhook's Secret watch: in-cluster or from a kubeconfig."""

from __future__ import annotations

import os
from typing import Any


def api_client(kubeconfig: str | None, connections: int = 16) -> Any:
    """In-cluster configuration inside a pod, the kubeconfig otherwise; a pool for every worker."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError, KeyError, AttributeError, ValueError) as exc:
        # The loader reports a malformed file with whatever its parsing tripped over.
        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ValueError(f"{source} is not a usable kubeconfig: {exc or type(exc).__name__}") from None
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_SYSTEM_NAMESPACE = "sortie-system"


def own_namespace() -> str:
    """The namespace the product runs in: ``POD_NAMESPACE`` (the manifests set it from the
    downward API), else the mounted service account's, else sortie-system. So an install
    into another namespace needs no flag to find its Lease, Secrets and Service."""
    from_env = os.environ.get("POD_NAMESPACE", "").strip()
    if from_env:
        return from_env
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as file:
            mounted = file.read().strip()
    except OSError:
        mounted = ""
    return mounted or DEFAULT_SYSTEM_NAMESPACE
