"""Following one Secret through the API: the webhook's serving pair, and the canary's copy of it.

Through a watch, not a volume: a renewed certificate is seen within a second instead of after the
kubelet's sync period, and a Secret that does not exist yet (the controller's leader makes it on a
first install) is waited for instead of holding the pod in ContainerCreating.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from sortie_egress.kube.informer import Informer, Store

log = logging.getLogger("sortie.secrets")


def secret_data(obj: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's data, decoded; an entry that is not base64 is left out (and said)."""
    decoded = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError, TypeError):
            log.warning("Secret %s: entry %s is not base64, ignored", (obj.get("metadata") or {}).get("name"), key)
    return decoded


def follow_secret(namespace: str, name: str, kubeconfig: str | None,
                  on_data: Callable[[dict[str, bytes]], None]) -> threading.Event:
    """Call ``on_data`` with the Secret's decoded data now and on every change; set the returned
    event to stop following."""
    from kubernetes import client

    from sortie_egress.kube.client import api_client

    core = client.CoreV1Api(api_client(kubeconfig, connections=2))
    stop = threading.Event()
    informer = Informer(f"secret-{name}", partial(core.list_namespaced_secret, namespace, field_selector=f"metadata.name={name}"),
                        lambda obj: obj, Store(), lambda obj: on_data(secret_data(obj)), stop, namespace)
    informer.start()
    return stop


__all__ = ["follow_secret", "secret_data"]
