"""The backend registry (sortie_egress/backends/): everything a backend needs outside its module.

Parametrised over the registry, so a new backend learns here what it still lacks; and a skeleton
registered only in this test shows how few places a fourth backend touches by hand (issue 23: at
most three outside its own module). What is generated from the registry (the CLI's choices, the
admission and authorship policies, the component's RBAC and protection, the chart's enum and RBAC
line) is checked to follow it, so adding a backend never means editing those by hand.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sortie_egress import backends
from sortie_egress.backends import Backend, BackendSettings, ObjectKind

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "manifests" / "helm" / "sortie-egress"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_manifests", ROOT / "scripts" / "generate-manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generate_manifests", module)
    spec.loader.exec_module(module)
    return module


def missing_for(backend: Backend) -> dict[str, list[str]]:
    """What ``backend`` lacks, by the place a person edits by hand (generated files are not places:
    scripts/generate-manifests.py writes them from the registry)."""
    missing: dict[str, list[str]] = {}

    def lacks(place: str, what: str) -> None:
        missing.setdefault(place, []).append(what)

    if backend.name == backends.DEFAULT_BACKEND:
        return missing  # the base install is the default backend's
    component = ROOT / "manifests" / "components" / f"{backend.name}-backend" / "kustomization.yaml"
    if not component.is_file():
        lacks("manifests/", f"the component {component.relative_to(ROOT)}")
    else:
        text = component.read_text()
        for needed in ("- rbac.yaml", "- admission-policies.yaml", f"value: {{name: SORTIE_EGRESS_BACKEND, value: {backend.name}}}",
                       f"sortie.io/backend: {backend.name}"):
            if needed not in text:
                lacks("manifests/", f"{component.relative_to(ROOT)} says {needed!r}")
    example = ROOT / "manifests" / "examples" / backend.name / "kustomization.yaml"
    if not example.is_file() or f"../../components/{backend.name}-backend" not in example.read_text():
        lacks("manifests/", f"the example {example.relative_to(ROOT)} with the component")
    values = CHART / "ci" / f"{backend.name}-backend-values.yaml"
    if not values.is_file() or (yaml.safe_load(values.read_text()) or {}).get("backend") != backend.name:
        lacks("manifests/", f"the chart's CI values {values.relative_to(ROOT)} (backend: {backend.name})")
    if not re.search(rf"^\| `{re.escape(backend.name)}` \|", (ROOT / "README.md").read_text(), re.M):
        lacks("README.md", f"a row of the backends table for `{backend.name}`")
    return missing


def generated_for(backend: Backend) -> list[str]:
    """What the generator would not yet say about ``backend`` (empty: everything derived has it)."""
    generator = _generator()
    absent = []
    if backend.name not in generator.values_schema():
        absent.append("values.schema.json's backend enum")
    if backend.name != backends.DEFAULT_BACKEND:
        files = generator._component_files()
        if f"manifests/components/{backend.name}-backend/rbac.yaml" not in files:
            absent.append("the component's rbac.yaml")
        if f'eq .Values.backend "{backend.name}"' not in generator.chart_template():
            absent.append("the chart's admission-policies template")
        if f'"{backend.name}" (list "{backend.kind.group}" "{backend.kind.plural}")' not in generator.chart_rbac():
            absent.append("the chart's RBAC line")
    from sortie_egress.protection.authorship import author_kinds

    if backend.name not in author_kinds():
        absent.append("the authorship policy's kinds")
    from sortie_egress.cli import build_parser

    parsed = build_parser().parse_args(["check", "-f", "-", "--backend", backend.name])
    if parsed.backend != backend.name:
        absent.append("the CLI's --backend")
    return absent


@pytest.mark.parametrize("backend", backends.registered(), ids=lambda b: b.name)
def test_every_backend_has_what_it_needs_outside_its_module(backend: Backend) -> None:
    assert missing_for(backend) == {}
    assert generated_for(backend) == []


@pytest.mark.parametrize("backend", backends.registered(), ids=lambda b: b.name)
def test_every_backend_declares_known_capabilities_and_a_kind_its_renderer_writes(backend: Backend) -> None:
    from sortie_egress.admission.session import session_pod
    from sortie_egress.policy.model import parse_policy
    from sortie_egress.render.session import DnsDestination
    from tests.support import session_pod as pod_manifest

    assert backend.capabilities <= set(backends.CAPABILITIES)
    manifest = pod_manifest(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]})
    rendered = backend.render(session_pod(manifest), parse_policy(json.dumps(
        {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]})).policy, DnsDestination())
    assert rendered["kind"] == backend.kind.kind
    assert rendered["apiVersion"] in {f"{backend.kind.group}/{version}" for version in backend.kind.versions}


def test_the_capabilities_of_the_built_in_backends_as_the_docs_state_them() -> None:
    """Written out by hand from the README's backend table."""
    assert {b.name: sorted(b.capabilities) for b in backends.registered()} == {
        "networkpolicy": [],
        "cilium": ["exact", "names_hosts", "node_guarded", "self_enforcing"],
        "clusternetworkpolicy": ["exact", "names_hosts", "node_guarded", "unwidenable_by_networkpolicy"],
    }
    assert [b.name for b in backends.in_docs_order()] == ["networkpolicy", "cilium", "clusternetworkpolicy"]


class _Skeleton(Backend):
    """A fourth backend as a newcomer starts it: a name, a kind, a renderer."""

    name = "skeleton"
    kind = ObjectKind("SkeletonPolicy", "skeleton.example.io", ("v1",), "skeletonpolicies", namespaced=True)
    capabilities = frozenset({backends.EXACT})
    summary = "skeleton (a test's stub)"

    def render(self, session: Any, policy: Any, dns: Any, canary: Any = None,
               settings: BackendSettings = BackendSettings()) -> dict[str, Any]:
        return {"apiVersion": "skeleton.example.io/v1", "kind": "SkeletonPolicy",
                "metadata": {"name": self.name_for("", session.session_id), "namespace": session.namespace}, "spec": {}}


def test_a_fourth_backend_touches_at_most_three_places_outside_its_module() -> None:
    """Registered (place one: the registry's line, done here by the test), the skeleton lacks only
    what a person must write: manifests (its component, an example, the chart's CI values) and the
    README's row. Everything else follows the registry."""
    with backends.registered_for_test(_Skeleton()) as skeleton:
        missing = missing_for(skeleton)
        assert sorted(missing) == ["README.md", "manifests/"], missing
        assert len(missing["manifests/"]) == 3 and len(missing["README.md"]) == 1, missing
        assert generated_for(skeleton) == []
        # The admission path reads it like the others: exact, so a denylist's ports are kept.
        from sortie_egress.policy.model import parse_policy

        policy = parse_policy('{"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}').policy
        assert backends.backend_warnings(policy, "skeleton") == []
        named = parse_policy('{"mode": "allowlist", "rules": [{"fqdn": "example.com"}]}').policy
        assert backends.backend_problems(named, "skeleton") == [
            "rules[0].fqdn: the skeleton backend cannot enforce DNS names; FQDN rules need the "
            "clusternetworkpolicy or cilium backend (the operator's --backend)"]
    assert "skeleton" not in backends.names()
