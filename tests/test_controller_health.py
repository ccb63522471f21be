"""The controller's probes: readiness is cache sync, liveness is threads alive and work worked off."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from sortie_egress.controller.health import serve_health
from sortie_egress.controller.main import STUCK_SECONDS, Controller, ControllerOptions


@pytest.fixture
def controller() -> Iterator[Controller]:
    from kubernetes import client

    # Nothing is started, so no request is ever sent: only the probes' judgement is under test.
    made = Controller(ControllerOptions(leader_elect=False, workers=1, metrics_port=None), api=client.ApiClient())
    yield made
    made.stop.set()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_ready_only_once_every_cache_has_synced(controller: Controller) -> None:
    ready, detail = controller.ready()
    assert not ready and detail == "caches not synced: informer-pods-all, informer-policies-all"
    for informer in controller.informers:
        informer.synced.set()
    assert controller.ready() == (True, "ok")


def test_a_dead_thread_is_unhealthy(controller: Controller) -> None:
    healthy, detail = controller.healthy()  # the informers were never started: as good as dead
    assert not healthy and detail.startswith("threads exited: informer-pods-all")


def test_queued_work_that_nobody_works_off_is_unhealthy(controller: Controller) -> None:
    idle = threading.Event()
    worker = threading.Thread(target=idle.wait, name="worker-0")
    worker.start()
    try:
        controller.informers, controller.workers = [], [worker]
        assert controller.healthy() == (True, "ok")
        controller.queue.add(("ns", "s1"))
        controller.last_progress = time.monotonic() - STUCK_SECONDS - 1
        healthy, detail = controller.healthy()
        assert not healthy and detail.startswith("1 sessions waiting and no reconcile finished for ")
        controller.last_progress = time.monotonic()
        assert controller.healthy() == (True, "ok")
    finally:
        idle.set()
        worker.join()


def test_the_endpoints_answer_what_the_probes_say(controller: Controller) -> None:
    server = serve_health("127.0.0.1", 0, controller)
    port = server.server_address[1]
    try:
        assert _get(port, "/readyz") == (503, "caches not synced: informer-pods-all, informer-policies-all\n")
        for informer in controller.informers:
            informer.synced.set()
        assert _get(port, "/readyz") == (200, "ok\n")
        assert _get(port, "/healthz")[0] == 503
        status, text = _get(port, "/metrics")
        assert status == 200 and "sortie_egress_widened_sessions 0.0" in text
        assert _get(port, "/nothing")[0] == 404
    finally:
        server.shutdown()
