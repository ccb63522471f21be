"""The controller's published settings (sortie_egress/controller/settings.py) and how the tools
pick what to judge with: expectations written out by hand."""

from __future__ import annotations

import json

import pytest

from sortie_egress.controller.settings import Published, resolve

PUBLISHED = Published("cilium", "cluster", 9445, 500, "required", "0.1.0")
DEFAULTS = {"backend": "networkpolicy", "dns": "cluster", "canary_port": 0, "cluster_policy_priority": 500}
NOTHING_GIVEN = {"backend": None, "dns": None, "canary_port": None, "cluster_policy_priority": None}


def test_the_annotation_text() -> None:
    assert PUBLISHED.encode() == ('{"backend": "cilium", "canaryPort": 9445, "clusterPolicyPriority": 500, '
                                  '"dns": "cluster", "enforcementWait": "required", "version": "0.1.0"}')
    assert Published.decode(PUBLISHED.encode()) == PUBLISHED


@pytest.mark.parametrize(("text", "why"), [
    ("nope", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"backend": "cilium"}', "dns is missing or not a str"),
    ('{"backend": "cilium", "dns": "cluster", "canaryPort": true, "clusterPolicyPriority": 500, '
     '"enforcementWait": "required", "version": "0.1.0"}', "canaryPort is missing or not a int"),
])
def test_anything_else_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Published.decode(text)


def test_without_flags_the_installed_controllers_settings_are_used_and_said() -> None:
    chosen, notes = resolve(NOTHING_GIVEN, PUBLISHED, DEFAULTS)
    assert chosen == {"backend": "cilium", "dns": "cluster", "canary_port": 9445, "cluster_policy_priority": 500}
    assert notes == ["judging with the installed controller's settings: --backend cilium, --dns cluster, "
                     "--canary-port 9445, --cluster-policy-priority 500 (sortie-egress 0.1.0)"]


def test_a_flag_wins_and_a_difference_is_a_warning() -> None:
    chosen, notes = resolve({**NOTHING_GIVEN, "canary_port": 0, "backend": "cilium"}, PUBLISHED, DEFAULTS)
    assert chosen["canary_port"] == 0 and chosen["backend"] == "cilium"
    assert notes[1:] == ["warning: --canary-port 0 differs from the installed controller's (9445): judging with the flag"]


def test_nothing_published_means_the_defaults_and_a_warning_saying_why() -> None:
    chosen, notes = resolve({**NOTHING_GIVEN, "dns": "any"}, None, DEFAULTS, "no Lease sortie-system/x")
    assert chosen == {"backend": "networkpolicy", "dns": "any", "canary_port": 0, "cluster_policy_priority": 500}
    assert notes == ["warning: the installed controller's settings are unknown (no Lease sortie-system/x): judging "
                     "with this command's flags and their defaults, which must be the controller's (--backend "
                     "networkpolicy, --dns any, --canary-port 0, --cluster-policy-priority 500)"]
    assert json.loads(PUBLISHED.encode())["canaryPort"] == 9445
