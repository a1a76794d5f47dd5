"""The FastAPI app through an in-process transport, with kube-scheduler's extender v1 payloads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from scheduler.core.scenario import load_nodes, load_pods, pod_object
from scheduler.extender.app import create_app
from scheduler.extender.binders import OfflineBinder
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.store import ClusterState

SCENARIO = {
    "nodeTypes": {
        "h100": {"gpus": 8, "gpuModel": "H100-80GB", "gpuMemory": "80Gi", "interconnect": "nvswitch", "cuda": "12.4"},
        "a100": {
            "gpus": 8,
            "gpuModel": "A100-40GB",
            "gpuMemory": "40Gi",
            "interconnect": "nvlink-pairs",
            "cuda": "12.2",
        },
        "l4": {"gpus": 4, "gpuModel": "L4", "gpuMemory": "24Gi", "interconnect": "pcie", "cuda": "12.2"},
    },
    "nodes": [
        {"name": "h100-0", "type": "h100"},
        {"name": "a100-0", "type": "a100"},
        {"name": "l4-0", "type": "l4"},
    ],
    "pods": [{"name": "pending-big", "gpus": 1, "annotations": {"gpusched.io/gpu-memory": "60Gi"}}],
}
NAMES = ["h100-0", "a100-0", "l4-0"]


@pytest.fixture
def service() -> ExtenderService:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(load_nodes(SCENARIO), load_pods(SCENARIO))
    return ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics())


@pytest.fixture
def client(service: ExtenderService) -> Iterator[httpx.Client]:
    app = create_app(service)

    class SyncASGI(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            async def run() -> httpx.Response:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
                    resp = await c.request(
                        request.method, str(request.url), content=request.content, headers=request.headers
                    )
                    await resp.aread()
                    return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)

            return asyncio.run(run())

    with httpx.Client(transport=SyncASGI(), base_url="http://extender") as c:
        yield c


def args(pod: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": names if names is not None else NAMES}


def test_filter_keeps_nodes_that_fit_and_explains_the_rest(client: httpx.Client) -> None:
    pod = pod_object({"name": "big", "gpus": 1, "annotations": {"gpusched.io/gpu-memory": "60Gi"}})
    body = client.post("/filter", json=args(pod)).json()
    assert body["NodeNames"] == ["h100-0"]
    assert body["Error"] == ""
    assert set(body["FailedAndUnresolvableNodes"]) == {"a100-0", "l4-0"}
    assert body["FailedAndUnresolvableNodes"]["l4-0"].startswith("gpusched: needs 1 GPU with 60.0GiB")


def test_filter_with_full_node_objects_answers_in_kind(client: httpx.Client) -> None:
    pod = pod_object({"name": "big", "gpus": 1, "annotations": {"gpusched.io/gpu-memory": "60Gi"}})
    nodes = {"items": [{"metadata": {"name": n}} for n in NAMES]}
    body = client.post("/filter", json={"Pod": pod, "Nodes": nodes, "NodeNames": None}).json()
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["h100-0"]


def test_unknown_nodes_fail_with_a_reason(client: httpx.Client) -> None:
    body = client.post("/filter", json=args(pod_object({"name": "p", "gpus": 1}), ["ghost", "l4-0"])).json()
    assert body["NodeNames"] == ["l4-0"]
    assert "unknown to gpusched" in body["FailedNodes"]["ghost"]


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"[]", b'{"Pod": 3}', b'{"NodeNames": ["a"]}', b'{"Pod": {}, "NodeNames": "a"}'],
)
def test_malformed_filter_answers_error_not_5xx(client: httpx.Client, payload: bytes) -> None:
    resp = client.post("/filter", content=payload)
    assert resp.status_code == 200
    assert resp.json()["Error"].startswith("gpusched: malformed filter request")


@pytest.mark.parametrize("names", [b'"a"', b"[1]", b'["a", 2]', b"{}"])
def test_malformed_node_names_are_refused_by_both_verbs(client: httpx.Client, names: bytes) -> None:
    # NodeNames is decoded only when it is not a list seen lately: still a malformed request
    pod = msgspec.json.encode(pod_object({"name": "p", "gpus": 1}))
    payload = b'{"Pod": ' + pod + b', "NodeNames": ' + names + b"}"
    filtered = client.post("/filter", content=payload)
    assert filtered.status_code == 200
    assert filtered.json()["Error"].startswith("gpusched: malformed filter request")
    prioritized = client.post("/prioritize", content=payload)
    assert prioritized.status_code == 400
    assert prioritized.json()["Error"].startswith("gpusched: malformed prioritize request")


def test_malformed_annotation_is_a_clear_error(client: httpx.Client) -> None:
    pod = pod_object({"name": "p", "gpus": 1, "annotations": {"gpusched.io/cuda": "new"}})
    body = client.post("/filter", json=args(pod)).json()
    assert "gpusched.io/cuda" in body["Error"] and body["NodeNames"] is None


def test_prioritize_gives_best_node_ten_and_integers(client: httpx.Client) -> None:
    body = client.post("/prioritize", json=args(pod_object({"name": "p", "gpus": 1}))).json()
    scores = {h["Host"]: h["Score"] for h in body}
    assert scores["l4-0"] == 10
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
    assert client.post("/prioritize", content=b"nope").status_code == 400


def test_bind_holds_gpus_so_two_quick_binds_never_double_book(client: httpx.Client, service: ExtenderService) -> None:
    for i in range(4):
        service.state.pods[f"default/q{i}"] = load_pods({"pods": [{"name": f"q{i}", "gpus": 1}]})[0]
    for i in range(4):
        out = client.post(
            "/bind", json={"PodName": f"q{i}", "PodNamespace": "default", "PodUID": f"u{i}", "Node": "l4-0"}
        )
        assert out.json() == {"Error": ""}
    snap = service.state.snapshot()
    assert snap.gpu_free_count()[snap.index["l4-0"]] == 0
    assert sorted(g for i in range(4) for g in snap.placements[f"default/q{i}"].gpus) == [0, 1, 2, 3]
    service.state.pods["default/q4"] = load_pods({"pods": [{"name": "q4", "gpus": 1}]})[0]
    out = client.post("/bind", json={"PodName": "q4", "PodNamespace": "default", "PodUID": "u4", "Node": "l4-0"}).json()
    assert "no longer fits l4-0" in out["Error"]
    assert snap.over_committed() == []


def test_bind_errors_are_clear(client: httpx.Client) -> None:
    out = client.post("/bind", json={"PodName": "ghost", "PodNamespace": "default", "PodUID": "u", "Node": "l4-0"})
    assert out.status_code == 200 and "not found" in out.json()["Error"]
    out = client.post("/bind", content=b'{"PodName": 1}')
    assert out.status_code == 200 and "malformed bind request" in out.json()["Error"]


def test_preempt_keeps_only_nodes_where_victims_make_room(client: httpx.Client, service: ExtenderService) -> None:
    running = load_pods(
        {
            "pods": [
                {"name": "v", "uid": "uid-v", "gpus": 4, "node": "l4-0", "gpuIds": [0, 1, 2, 3]},
                {"name": "w", "uid": "uid-w", "gpus": 1, "node": "a100-0", "gpuIds": [0]},
            ]
        }
    )
    service.state.load_static([], running)
    pod = pod_object({"name": "p", "gpus": 4, "annotations": {"gpusched.io/gpu-models": "L4"}})
    body = client.post(
        "/preempt",
        json={
            "Pod": pod,
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {
                "l4-0": {"Pods": [{"UID": "uid-v"}], "NumPDBViolations": 0},
                "a100-0": {"Pods": [{"UID": "uid-w"}], "NumPDBViolations": 1},
            },
        },
    ).json()
    assert body == {"NodeNameToMetaVictims": {"l4-0": {"Pods": [{"UID": "uid-v"}], "NumPDBViolations": 0}}}
    # The what-if left the cluster as it was.
    assert service.state.snapshot().placements["default/v"].gpus == (0, 1, 2, 3)


def test_explain_shows_per_plugin_scores_and_reasons(client: httpx.Client) -> None:
    body = client.get("/explain/default/pending-big").json()
    assert body["best"] == "h100-0"
    assert set(body["nodes"]["h100-0"]["scores"]) == {
        "gpu-memory-packing",
        "nvlink",
        "locality",
        "cold-start",
        "lora",
        "inference-fit",
        "freshness",
        "fragmentation",
    }
    assert body["nodes"]["l4-0"]["feasible"] is False
    assert client.get("/explain/default/nobody").status_code == 404


def test_health_ready_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").text == "ok"
    assert client.get("/readyz").status_code == 200
    client.post("/filter", json=args(pod_object({"name": "p", "gpus": 1, "annotations": {"gpusched.io/cuda": "13.0"}})))
    text = client.get("/metrics").text
    assert 'gpusched_extender_request_duration_seconds_count{verb="filter"}' in text
    assert 'gpusched_filter_rejections_total{plugin="cuda"} 3.0' in text
    assert 'gpusched_cluster_gpus{state="free"} 20.0' in text


def test_stale_reports_make_filter_ask_for_a_retry_instead_of_parking_the_pod() -> None:
    scenario = {
        "nodes": [
            {"name": "stale", "gpus": 8, "gpuModel": "H100", "gpuMemory": "80Gi", "reportAgeSeconds": 600},
            {"name": "small", "gpus": 4, "gpuModel": "L4", "gpuMemory": "24Gi"},
        ]
    }
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(load_nodes(scenario), [])
    service = ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics())
    from scheduler.extender import wire

    big = pod_object({"name": "big", "gpus": 1, "annotations": {"gpusched.io/gpu-memory": "60Gi"}})
    out = service.filter(wire.ExtenderArgs(pod=big, node_names=["stale", "small"]))
    assert out.node_names is None
    assert out.error.startswith("gpusched: no node fits now, retrying: ")
    assert "1 GPUNodeReport is stale: 600s old, TTL 90s" in out.error
    assert "1 needs 1 GPU with 60.0GiB each" in out.error
    # When some node fits, the stale one is just a per-node reason.
    small = pod_object({"name": "small-pod", "gpus": 1})
    out = service.filter(wire.ExtenderArgs(pod=small, node_names=["stale", "small"]))
    assert out.node_names == ["small"] and "stale" in out.failed_and_unresolvable_nodes


class BlockingBinder(OfflineBinder):
    """Offline binds, except that the first one waits (as an API call under way) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()

    def bind(self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            if not self.released.wait(30):
                raise TimeoutError("never released")
        super().bind(namespace, name, uid, node, annotations)


def test_a_bind_waiting_on_the_api_blocks_neither_the_event_loop_nor_other_verbs() -> None:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(load_nodes(SCENARIO), load_pods(SCENARIO))
    binder = BlockingBinder()
    app = create_app(ExtenderService(state, registry.build(config), binder, ExtenderMetrics()))
    first = pod_object({"name": "first", "gpus": 1})
    second = pod_object({"name": "second", "gpus": 1})
    state.upsert_pod(first)
    state.upsert_pod(second)

    def binding(obj: dict[str, Any], node: str) -> dict[str, Any]:
        meta = obj["metadata"]
        return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}

    async def run() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://extender") as c:
            held = asyncio.create_task(c.post("/bind", json=binding(first, "h100-0")))
            await asyncio.to_thread(binder.entered.wait, 30)
            # The first bind sits in its API call: filter, prioritize and a bind to another node
            # are all answered meanwhile, on the same event loop.
            filtered = await c.post("/filter", json=args(second))
            scored = await c.post("/prioritize", json=args(second))
            other = await c.post("/bind", json=binding(second, "a100-0"))
            done_meanwhile = not held.done()
            binder.released.set()
            first_answer = await held
            return [
                str(done_meanwhile),
                str(filtered.status_code),
                str(scored.status_code),
                other.json().get("Error", ""),
                first_answer.json().get("Error", ""),
            ]

    assert asyncio.run(run()) == ["True", "200", "200", "", ""]
    assert binder.bound == {"default/second": "a100-0", "default/first": "h100-0"}
