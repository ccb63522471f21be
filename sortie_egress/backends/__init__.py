"""The backends: which kind of object enforces a session's policy, one module each, one registry.

The operator chooses the backend (``--backend``) for the whole cluster; everything that depends
on the choice asks the registry (``get``) instead of naming backends: admission (``problems``,
``warnings``), the controller and ``audit`` (render, bind, judge, the API), the CLI's choices, the
tamper and authorship policies, and the manifests' generator (RBAC, components, the chart's enum).

A policy the chosen backend cannot enforce *exactly* is refused at admission with the reason
(``backend_problems``), never enforced as something weaker; a pod that bypassed admission with
such a policy is enforced as DNS only by the controller, like any invalid annotation.

Adding one: a module here with a ``Backend`` subclass, a line in ``_BUILTIN``, and what
tests/test_backend_registry.py says is still missing (docs, a chart values file for CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from sortie_egress.backends.base import (CAPABILITIES, EXACT, NAMES_HOSTS, NODE_GUARDED, SELF_ENFORCING,
                                         UNWIDENABLE_BY_NETWORKPOLICY, Backend, BackendSettings, BackendUnavailable,
                                         ObjectKind)
from sortie_egress.backends.cilium import CiliumBackend
from sortie_egress.backends.clusternetworkpolicy import ClusterNetworkPolicyBackend
from sortie_egress.backends.networkpolicy import NetworkPolicyBackend

if TYPE_CHECKING:
    from sortie_egress.policy.model import EgressPolicy

_BUILTIN: Final[tuple[Backend, ...]] = (NetworkPolicyBackend(), ClusterNetworkPolicyBackend(), CiliumBackend())
_REGISTRY: dict[str, Backend] = {backend.name: backend for backend in _BUILTIN}

DEFAULT_BACKEND: Final = "networkpolicy"
#: The built-in backends' names, in the order the CLI and docs list them.
BACKENDS: Final = tuple(backend.name for backend in _BUILTIN)
#: The backends that can enforce a rule naming its destination by DNS name.
NAME_BACKENDS: Final = tuple(backend.name for backend in _BUILTIN if backend.has(NAMES_HOSTS))


def get(name: str) -> Backend:
    """The backend called ``name``; KeyError (with the choices) for an unknown one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r} (choose from {', '.join(_REGISTRY)})") from None


def registered() -> tuple[Backend, ...]:
    """Every backend, built-in first."""
    return tuple(_REGISTRY.values())


def in_docs_order() -> tuple[Backend, ...]:
    """The default first, then namespaced kinds, then cluster-scoped ones: how help texts, the
    admission policies and the docs list backends."""
    return tuple(sorted(_REGISTRY.values(), key=lambda b: (b.name != DEFAULT_BACKEND, not b.kind.namespaced, b.name)))


def names() -> tuple[str, ...]:
    """Every registered backend's name (a test may register one)."""
    return tuple(_REGISTRY)


def with_capability(capability: str) -> tuple[str, ...]:
    """The names of the registered backends that declare ``capability``."""
    assert capability in CAPABILITIES, capability
    return tuple(backend.name for backend in _REGISTRY.values() if backend.has(capability))


@contextmanager
def registered_for_test(backend: Backend) -> Iterator[Backend]:
    """Register ``backend`` while the block runs (tests: a skeleton shows what a new backend lacks)."""
    assert backend.name not in _REGISTRY, backend.name
    _REGISTRY[backend.name] = backend
    try:
        yield backend
    finally:
        del _REGISTRY[backend.name]


def backend_warnings(policy: EgressPolicy | None, backend: str) -> list[str]:
    """What ``backend`` enforces differently from what the policy says, in the safe direction."""
    return [] if policy is None else get(backend).warnings(policy)


def backend_problems(policy: EgressPolicy | None, backend: str) -> list[str]:
    """Why ``backend`` cannot enforce ``policy`` exactly (empty when it can)."""
    return [] if policy is None else get(backend).problems(policy)


def wait_needed(mode: str, backend: str) -> bool:
    """Whether a session pod must carry the wait: one rule for the webhook (inject it), the
    admission policies (require it; protection/authorship.py spells it in CEL) and the controller
    (hold pods without it until the baseline is verified). ``auto`` leaves it out only on a
    backend whose dataplane keeps the promise itself (SELF_ENFORCING, with the session baseline)."""
    if mode == "off":
        return False
    if mode == "auto":
        return not get(backend).has(SELF_ENFORCING)
    return True


__all__ = ["BACKENDS", "Backend", "BackendSettings", "BackendUnavailable", "CAPABILITIES", "DEFAULT_BACKEND", "EXACT",
           "NAMES_HOSTS", "NAME_BACKENDS", "NODE_GUARDED", "ObjectKind", "SELF_ENFORCING",
           "UNWIDENABLE_BY_NETWORKPOLICY", "backend_problems", "backend_warnings", "get", "in_docs_order", "names", "registered",
           "registered_for_test", "wait_needed", "with_capability"]
