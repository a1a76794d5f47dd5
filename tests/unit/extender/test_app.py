"""The app's edge: while a view of the cluster is stale, every verb refuses with an Error naming it
and /readyz answers 503 naming it; once current, the same requests are answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scheduler.core.scenario import pod_object
from scheduler.extender.app import create_app
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.store import ClusterState
from tests.builders import gpu_node
from tests.unit.extender.test_service import FakeBinder

STALE = {"pods": "failing for 42s: connection: refused", "nodes": "not listed yet"}
POD = pod_object({"name": "p", "gpus": 1})
ARGS = {"Pod": POD, "NodeNames": ["n0"]}
BIND = {"PodName": "p", "PodNamespace": "default", "PodUID": "uid-p", "Node": "n0"}
SAYS = "nodes, pods (nodes: not listed yet; pods: failing for 42s: connection: refused)"  # names first, sorted


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, dict[str, str], FakeBinder, ExtenderMetrics]]:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static([gpu_node("n0", 4)], ())
    binder, metrics = FakeBinder(objects={"default/p": POD}), ExtenderMetrics()
    service = ExtenderService(state, registry.build(config), binder, metrics)
    views: dict[str, str] = {}
    with TestClient(create_app(service, stale_views=lambda: dict(views))) as client:
        yield client, views, binder, metrics


@pytest.mark.parametrize(
    ("verb", "body", "status"),
    [
        ("filter", ARGS, 200),  # filter and bind answer 200 with Error: kube-scheduler shows it in events
        ("prioritize", ARGS, 400),
        ("bind", BIND, 200),
        ("preempt", {"Pod": POD, "NodeNameToMetaVictims": {}}, 400),
    ],
)
def test_every_verb_refuses_while_a_view_is_stale_and_names_it(
    setup: tuple[TestClient, dict[str, str], FakeBinder, ExtenderMetrics], verb: str, body: Any, status: int
) -> None:
    client, views, binder, metrics = setup
    views.update(STALE)
    resp = client.post(f"/{verb}", json=body)
    assert resp.status_code == status
    assert resp.json()["Error"] == f"gpusched: not deciding from a stale view of the cluster: {SAYS}"
    assert binder.calls == []
    assert (
        metrics.registry.get_sample_value("gpusched_extender_requests_total", {"verb": verb, "outcome": "stale_view"})
        == 1.0
    )

    views.clear()
    resp = client.post(f"/{verb}", json=body)
    answer = resp.json()
    assert resp.status_code == 200 and not (isinstance(answer, dict) and answer.get("Error")), answer


def test_readyz_names_the_stale_views_until_they_are_current(
    setup: tuple[TestClient, dict[str, str], FakeBinder, ExtenderMetrics],
) -> None:
    client, views, _, _ = setup
    assert (client.get("/readyz").status_code, client.get("/readyz").text) == (200, "ok")
    views.update(STALE)
    resp = client.get("/readyz")
    assert (resp.status_code, resp.text) == (503, f"stale views: {SAYS}")
    views.clear()
    assert client.get("/readyz").status_code == 200
