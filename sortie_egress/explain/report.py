"""One answer per destination, and the forms an operator reads it in (table, wide, JSON, YAML).

A destination may stand for several packets (a Service with several endpoints): the answer is
their common verdict, or ``mixed`` with each endpoint's. What explain cannot know is said in the
answer itself (``notes``), not left to a log. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sortie_egress.explain.asked import Asked
from sortie_egress.explain.decide import PacketVerdict, Selecting, judge, selecting
from sortie_egress.explain.view import ExplainView, Unresolvable, packets


@dataclass(frozen=True, slots=True)
class Answer:
    asked: Asked
    #: allowed, denied, unknown, mixed (endpoints differ), unreachable (nothing answers there, whatever
    #: the policies say: a Service without that port or endpoint), or error (no such object).
    verdict: str
    packets: tuple[PacketVerdict, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    pod: str
    dataplane: str
    backend: str | None
    state: tuple[str, str] | None
    selected_by: tuple[Selecting, ...]
    notes: tuple[str, ...]
    answers: tuple[Answer, ...]


def _pod_notes(view: ExplainView) -> list[str]:
    """Why the verdicts are not (yet) what the pod does."""
    pod = view.pod
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    phase = status.get("phase")
    notes = []
    if spec.get("schedulingGates"):
        gates = ", ".join(str(gate.get("name")) for gate in spec["schedulingGates"])
        notes.append(f"the pod is not released yet (scheduling gates: {gates}): it sends nothing; these verdicts are "
                     "for once it runs with the objects as they are now")
    elif phase == "Pending":
        waiting = [s.get("name") for s in status.get("initContainerStatuses") or [] if not (s.get("state") or {}).get("terminated")]
        if waiting:
            notes.append(f"the pod is held at its init containers ({', '.join(map(str, waiting))}): its app sends nothing yet")
        else:
            notes.append("the pod is Pending: it sends nothing yet")
    elif phase in ("Succeeded", "Failed"):
        notes.append(f"the pod has finished ({phase}): it sends nothing")
    if not pod.get("status"):
        notes.append("judged from a manifest (-f): the pod's labels as admission would leave them")
    return notes


def explain(view: ExplainView, asked: list[Asked], backend: str | None = None) -> Explanation:
    answers = []
    for question in asked:
        try:
            found, notes = packets(view, question)
        except Unresolvable as exc:
            answers.append(Answer(question, "error", notes=(str(exc),)))
            continue
        verdicts = tuple(judge(view, packet) for packet in found)
        kinds = {verdict.verdict for verdict in verdicts}
        overall = "unreachable" if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"
        if question.where == "name" and overall == "unknown":
            notes = [*notes, "a name is judged by the name rules that match it; its addresses are known only once "
                             "resolved: ask about an address too"]
        answers.append(Answer(question, overall, verdicts, tuple(notes)))
    metadata = view.pod.get("metadata") or {}
    return Explanation(f"{metadata.get('namespace', view.namespace)}/{metadata.get('name', '')}", view.dataplane, backend,
                       view.state, tuple(selecting(view)), tuple([*view.notes, *_pod_notes(view)]), tuple(answers))


def _decided_by(answer: Answer) -> str:
    if not answer.packets:
        return "; ".join(answer.notes)
    first = answer.packets[0]
    if answer.verdict == "mixed":
        return "; ".join(f"{v.packet.endpoint.describe()}: {v.verdict}" for v in answer.packets)
    said = first.deciding[0].describe() if first.deciding else first.reason
    more = len(first.deciding) - 1
    return said + (f" (+{more} more)" if more > 0 else "")


def as_table(explanation: Explanation, wide: bool = False) -> str:
    lines = [f"pod: {explanation.pod}    dataplane: {explanation.dataplane}"
             + (f"    backend: {explanation.backend}" if explanation.backend else "")
             + (f"    state: {explanation.state[0]}" if explanation.state else "")]
    if explanation.state and explanation.state[1]:
        lines.append(f"  {explanation.state[1]}")
    lines.append("selected by: " + (", ".join(s.describe() for s in explanation.selected_by) or
                                    "no policy (the cluster default: everything)"))
    lines += [f"note: {note}" for note in explanation.notes]
    header = ("DESTINATION", "VERDICT", "DECIDED BY")
    rows = [(a.asked.text, a.verdict, _decided_by(a)) for a in explanation.answers]
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    lines.append("")
    lines += [f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}".rstrip() for r in [header, *rows]]
    if wide:
        for answer in explanation.answers:
            lines.append("")
            lines.append(f"{answer.asked.text}: {answer.verdict}")
            for note in answer.notes:
                lines.append(f"  note: {note}")
            for verdict in answer.packets:
                lines.append(f"  {verdict.packet.describe()}: {verdict.verdict}, {verdict.reason}")
                lines += [f"    {said.layer}: {said.describe()}" for said in verdict.deciding]
                lines += [f"    may match: {said.describe()}" for said in verdict.uncertain]
    return "\n".join(lines) + "\n"


def as_data(explanation: Explanation) -> dict[str, Any]:
    def endpoint(verdict: PacketVerdict) -> dict[str, Any]:
        e = verdict.packet.endpoint
        return {"identity": e.identity, "address": e.address, "namespace": e.namespace, "name": e.name}

    return {
        "pod": explanation.pod, "dataplane": explanation.dataplane, "backend": explanation.backend,
        "state": None if explanation.state is None else {"state": explanation.state[0], "detail": explanation.state[1]},
        "selectedBy": [{"layer": s.layer, "kind": s.kind, "namespace": s.namespace, "name": s.name, "role": s.role,
                        "detail": s.detail} for s in explanation.selected_by],
        "notes": list(explanation.notes),
        "answers": [{
            "destination": a.asked.text, "verdict": a.verdict, "notes": list(a.notes),
            "packets": [{"to": endpoint(v), "protocol": v.packet.protocol, "port": v.packet.port, "via": v.packet.via,
                         "verdict": v.verdict, "reason": v.reason,
                         "decidedBy": [s.as_dict() for s in v.deciding],
                         "mayMatch": [s.as_dict() for s in v.uncertain]} for v in a.packets],
        } for a in explanation.answers],
    }


def as_json(explanation: Explanation) -> str:
    return json.dumps(as_data(explanation), indent=2) + "\n"


__all__ = ["Answer", "Explanation", "as_data", "as_json", "as_table", "explain"]
