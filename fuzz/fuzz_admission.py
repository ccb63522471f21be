"""Coverage-guided fuzzing (atheris) of annotation parsing and AdmissionReview handling.

    python fuzz/fuzz_admission.py policy -runs=1000000      # the documented run (docs/testing.md)
    python fuzz/fuzz_admission.py review -runs=1000000
    python fuzz/fuzz_admission.py policy -runs=20000 -seed=1  # what CI runs (tests/test_fuzz.py)

A finding is any exception other than the documented refusal, a refusal without
a message, or one input taking over 10 ms (timed again, uninstrumented
timing noise aside, before it counts). Seeds come from fuzz/corpus/.
"""

from __future__ import annotations

import os
import sys
import time

import atheris

with atheris.instrument_imports(include=["sortie_egress"]):
    from sortie_egress import logs
    from sortie_egress.admission.memo import memoised_mutation
    from sortie_egress.admission.mutate import mutate_pod
    from sortie_egress.admission.response import encode_response
    from sortie_egress.admission.review import admission_request, decode_request
    from sortie_egress.policy.fields import POLICY_FIELDS, RULE_FIELDS
    from sortie_egress.policy.model import _parse_policy
    from sortie_egress.server.app import WebhookSettings, create_app

RULE_KEYS = [field.name for field in RULE_FIELDS]  # the vocabulary's table (policy/fields.py)
parse_uncached = _parse_policy  # the memo would hide repeated work from the fuzzer
MUTATE = create_app(WebhookSettings()).endpoints["/mutate"]  # the webhook's whole hot path, memo included
logs._stream = lambda: open(os.devnull, "w")  # one admission line per input is not a finding
SLOW_SECONDS = 0.010
stats = {"inputs": 0, "slowest": 0.0}


def _timed(call, data):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = call(data)
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_SECONDS:
        again = min(_once(call, data) for _ in range(3))
        if again > SLOW_SECONDS:
            raise AssertionError(f"input took {again * 1000:.1f} ms (> 10 ms): {data[:80]!r}")
        elapsed = again
    stats["slowest"] = max(stats["slowest"], elapsed)
    stats["inputs"] += 1
    if stats["inputs"] % 100000 == 0:
        print(f"#{stats['inputs']} slowest so far {stats['slowest'] * 1000:.2f} ms", file=sys.stderr, flush=True)
    return result


def _once(call, data) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    call(data)
    return time.perf_counter() - started


def _policy(data: bytes) -> None:
    text = data.decode("utf-8", "surrogatepass") if data else ""
    result = parse_uncached(text)
    if result.errors:
        assert result.policy is None, "a refused policy must not also be a policy"
        assert all(isinstance(error, str) and ": " in error for error in result.errors), result.errors
    elif result.policy is not None:
        again = parse_uncached(result.canonical)
        assert again.ok and again.policy == result.policy, "canonical form does not parse back to itself"


def _review(data: bytes) -> None:
    reply = MUTATE.answer(data, time.perf_counter())
    if reply.status == 400:
        assert reply.payload.startswith(b"bad AdmissionReview: ") and len(reply.payload) > 22, "a refusal needs a reason"
        return
    assert reply.status == 200, reply
    # The direct decision, with no exception handling around it: a bug raises here, and the
    # endpoint (memoised or not) must have answered exactly what it decides.
    request = decode_request(data)
    direct = encode_response(request.uid, mutate_pod(admission_request(request)))
    memoised = memoised_mutation(request)
    assert memoised is None or memoised.for_uid(request.uid) == direct, "memoised and direct answers differ"
    assert reply.payload == direct, "the endpoint's answer is not the decision's"


def _structured(data: bytes) -> bytes:
    """Half the inputs: a policy-shaped document built from the bytes, so the
    fuzzer reaches validation instead of stopping at the JSON parser."""
    provider = atheris.FuzzedDataProvider(data)

    def value(depth: int = 0) -> object:
        kind = provider.ConsumeIntInRange(0, 9 if depth < 3 else 5)
        if kind == 0:
            return provider.ConsumeIntInRange(-(2**70), 2**70)
        if kind == 1:
            return provider.ConsumeBool()
        if kind == 2:
            return provider.ConsumeFloat()
        if kind == 3:
            return None
        if kind in (4, 5):
            return provider.PickValueInList(["10.0.0.0/8", "10.0.0.1/33", "::/0", "0.0.0.0/0", "2001:db8::1", "tcp",
                                             "UDP", "sctp", "allowlist", "denylist", "", "::ffff:1.2.3.4/128",
                                             "api.example.com", "*.example.com", "API.Example.COM.", "*.com", "a.*.b.com",
                                             "10.0.0.1", "localhost"]
                                            ) if provider.ConsumeBool() else provider.ConsumeUnicodeNoSurrogates(12)
        if kind in (6, 7):
            return [value(depth + 1) for _ in range(provider.ConsumeIntInRange(0, 4))]
        keys = [*RULE_KEYS, *POLICY_FIELDS, "rule", provider.ConsumeUnicodeNoSurrogates(4)]
        return {provider.PickValueInList(keys): value(depth + 1) for _ in range(provider.ConsumeIntInRange(0, 5))}

    rules = [value(1) if provider.ConsumeIntInRange(0, 4) == 0 else {
        key: value(2) for key in RULE_KEYS if provider.ConsumeBool()}
        for _ in range(provider.ConsumeIntInRange(0, 6))]
    document: object = {"mode": value(1) if provider.ConsumeIntInRange(0, 3) == 0 else provider.PickValueInList(
        ["allowlist", "denylist", ""]), "rules": rules}
    if provider.ConsumeIntInRange(0, 7) == 0:
        document = value()
    import json

    try:
        return json.dumps(document, allow_nan=provider.ConsumeBool()).encode()
    except (ValueError, OverflowError):
        return b"{}"


def main() -> None:
    target = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in ("policy", "review") else "policy"
    check = _policy if target == "policy" else _review

    def one_input(data: bytes) -> None:
        if target == "policy":
            if data[:1] == b"\x01":
                data = _structured(data[1:])
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return  # annotations are UTF-8 strings by the time we see them
        _timed(check, data)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
