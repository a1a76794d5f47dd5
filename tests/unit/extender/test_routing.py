"""Verbs on a replica that does not lead: forwarded once to the leader, or refused with a reason.

The leader is a real extender app served by uvicorn on a loopback port; the election is a
stand-in for what `LeaderElector` reports (tests/e2e/test_leader_e2e.py runs the real one)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from scheduler.core.scenario import load_nodes, load_pods, pod_object
from scheduler.extender.app import create_app
from scheduler.extender.binders import OfflineBinder
from scheduler.extender.routing import FORWARDED_BY, LeaderRouting
from scheduler.extender.service import ExtenderService
from scheduler.metrics import ExtenderMetrics
from scheduler.plugins import registry
from scheduler.state.store import ClusterState

SCENARIO = {
    "nodeTypes": {"h100": {"gpus": 8, "gpuModel": "H100-80GB", "gpuMemory": "80Gi", "cuda": "12.4"}},
    "nodes": [{"name": "h100-0", "type": "h100"}, {"name": "h100-1", "type": "h100"}],
}
FILTER = {"Pod": pod_object({"name": "p", "gpus": 2}), "NodeNames": ["h100-0", "h100-1"]}


class Election:
    """What the elector would say: whether this replica leads, and who does."""

    def __init__(self, leading: bool, leader: tuple[str, str] | None) -> None:
        self.identity = "standby"
        self.leading = leading
        self.current = leader

    def is_leader(self) -> bool:
        return self.leading

    def leader(self) -> tuple[str, str] | None:
        return self.current

    def stop(self, release: bool = True) -> None:
        pass


def service() -> ExtenderService:
    config = registry.config_from(None)
    state = ClusterState(config)
    state.load_static(load_nodes(SCENARIO), load_pods(SCENARIO))
    return ExtenderService(state, registry.build(config), OfflineBinder(), ExtenderMetrics())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def leader() -> Iterator[tuple[str, ExtenderService]]:
    svc = service()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "leader app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", svc
    server.should_exit = True
    thread.join(10)


def post(
    svc: ExtenderService, election: Election, verb: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    app = create_app(svc, LeaderRouting(election))

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://standby") as c:
            return await c.post(f"/{verb}", json=body, headers=headers or {})

    return asyncio.run(run())


def counted(svc: ExtenderService, name: str, **labels: str) -> float:
    return svc.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_standby_forwards_to_the_leader_and_returns_its_answer(leader: tuple[str, ExtenderService]) -> None:
    url, leader_service = leader
    direct = httpx.post(f"{url}/filter", json=FILTER, timeout=10).json()
    before = counted(leader_service, "gpusched_extender_requests_total", verb="filter", outcome="ok")
    standby = service()
    answer = post(standby, Election(False, ("leader-0", url)), "filter", FILTER)
    assert answer.status_code == 200 and answer.json() == direct
    assert sorted(answer.json()["NodeNames"]) == ["h100-0", "h100-1"]
    # Counted once, where it was decided; the standby counts only that it passed it on.
    assert counted(leader_service, "gpusched_extender_requests_total", verb="filter", outcome="ok") == before + 1
    assert counted(standby, "gpusched_extender_forwarded_total", verb="filter") == 1
    assert counted(standby, "gpusched_extender_requests_total", verb="filter", outcome="ok") == 0


def test_the_leader_answers_itself() -> None:
    svc = service()
    answer = post(svc, Election(True, ("standby", "http://127.0.0.1:9")), "filter", FILTER)
    assert answer.status_code == 200 and sorted(answer.json()["NodeNames"]) == ["h100-0", "h100-1"]
    assert counted(svc, "gpusched_extender_forwarded_total", verb="filter") == 0


@pytest.mark.parametrize(
    ("election", "headers", "reason"),
    [
        (Election(False, None), {}, "no gpusched leader elected yet"),
        # a second hop is refused: a request crosses at most one
        (
            Election(False, ("leader-0", "http://127.0.0.1:9")),
            {FORWARDED_BY: "other"},
            "not the leader (forwarded by other)",
        ),
        # the Lease still names this replica, but its leadership lapsed (renew deadline passed)
        (Election(False, ("standby", "http://127.0.0.1:9")), {}, "leader standby has no reachable URL"),
        (Election(False, ("leader-0", "")), {}, "leader leader-0 has no reachable URL"),
        (Election(False, ("leader-0", f"http://127.0.0.1:{free_port()}")), {}, "did not answer"),
    ],
)
def test_without_a_leader_to_answer_each_verb_fails_in_its_own_way(
    election: Election, headers: dict[str, str], reason: str
) -> None:
    svc = service()
    filtered = post(svc, election, "filter", FILTER, headers)
    assert filtered.status_code == 200 and reason in filtered.json()["Error"]  # kube-scheduler shows it
    prioritized = post(svc, election, "prioritize", FILTER, headers)
    assert prioritized.status_code == 400 and reason in prioritized.json()["Error"]
    bound = post(
        svc, election, "bind", {"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "h100-0"}, headers
    )
    assert bound.status_code == 200 and reason in bound.json()["Error"]
    assert counted(svc, "gpusched_extender_requests_total", verb="filter", outcome="no_leader") == 1
