"""The informer's list/watch/relist logic against a scripted API (unit tier: no real server here;
tests/e2e exercise it against a real kube-apiserver)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scheduler.state.informer import Handlers, Informer
from scheduler.state.kube import KubeError


class ScriptedKube:
    """Answers list_all and watch from a script; records what the informer asked for."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, str]] = []

    def list_all(self, path: str, params: Any = None) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(("list", ""))
        return self.lists.pop(0)

    def watch(self, path: str, rv: str, timeout_s: int = 300, params: Any = None) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", rv))
        step = self.watches.pop(0) if self.watches else "stop"
        if step == "stop":
            self.informer.stop()
            return
        if isinstance(step, Exception):
            raise step
        yield from step

    informer: Informer


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def run(kube: ScriptedKube) -> tuple[Informer, dict[str, Any], list[str]]:
    seen: dict[str, Any] = {}
    restarts: list[str] = []

    def replace(items: list[dict[str, Any]]) -> None:
        seen.clear()
        seen.update({i["metadata"]["name"]: i for i in items})

    handlers = Handlers(
        replace, lambda o: seen.__setitem__(o["metadata"]["name"], o), lambda o: seen.pop(o["metadata"]["name"], None)
    )
    informer = Informer(kube, "things", "/x", handlers, on_restart=lambda k, why: restarts.append(why), backoff=(0, 0))  # type: ignore[arg-type]
    kube.informer = informer
    informer.run()
    return informer, seen, restarts


def test_lists_then_applies_watch_events_and_resumes_from_last_version() -> None:
    kube = ScriptedKube(
        [([obj("a", "1")], "10")],
        [
            [{"type": "ADDED", "object": obj("b", "11")}, {"type": "DELETED", "object": obj("a", "12")}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            "stop",
        ],
    )
    informer, seen, restarts = run(kube)
    assert informer.synced.is_set()
    assert set(seen) == {"b"}
    assert kube.calls == [("list", ""), ("watch", "10"), ("watch", "12"), ("watch", "20")]
    assert restarts == []


def test_gone_relists_and_replaces_everything() -> None:
    kube = ScriptedKube(
        [([obj("a", "1"), obj("b", "2")], "10"), ([obj("c", "30")], "30")],
        [[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}], "stop"],
    )
    _, seen, restarts = run(kube)
    assert set(seen) == {"c"}  # a and b vanished while we were away
    assert restarts == ["gone"]
    assert kube.calls == [("list", ""), ("watch", "10"), ("list", ""), ("watch", "30")]


def test_dropped_connection_reconnects_from_the_same_version() -> None:
    kube = ScriptedKube(
        [([obj("a", "1")], "10")],
        [
            KubeError(0, "connection reset"),
            KubeError(500, "boom"),
            [{"type": "ADDED", "object": obj("z", "11")}],
            "stop",
        ],
    )
    _, seen, restarts = run(kube)
    assert set(seen) == {"a", "z"}
    assert restarts == ["error", "error"]
    assert [c for c in kube.calls if c[0] == "list"] == [("list", "")]


def test_http_410_on_watch_start_relists() -> None:
    kube = ScriptedKube([([], "5"), ([obj("n", "9")], "9")], [KubeError(410, "Gone"), "stop"])
    _, seen, restarts = run(kube)
    assert set(seen) == {"n"} and restarts == ["gone"]
