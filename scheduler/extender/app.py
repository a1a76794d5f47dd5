"""The FastAPI app: the extender verbs at the edge, decoded and encoded with msgspec.

Malformed input never yields a 5xx: filter and bind answer 200 with a clear `Error` (kube-scheduler
shows it in the pod's events); prioritize and preempt answer 400 with `Error` (kube-scheduler then
ignores gpusched's scores, or its preemption advice, for that attempt). With leader election, a
replica that does not hold the Lease passes the verbs on to the one that does (`routing.py`).
While a view of the cluster is stale (`stale_views`: an informer that has not listed, or has been
failing for longer than informerGraceSeconds), every verb answers the same way with an `Error`
naming the stale views, and `/readyz` answers 503 naming them: no pod is placed from a stale view.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from scheduler.extender import wire
from scheduler.extender.routing import LeaderRouting
from scheduler.extender.service import ExtenderService

log = logging.getLogger("gpusched.extender")
JSON = "application/json"


def _json(body: Any, status: int = 200) -> Response:
    """`body` encoded, or as it is when already JSON (msgspec.Raw)."""
    content = memoryview(body) if isinstance(body, msgspec.Raw) else msgspec.json.encode(body)
    return Response(content=content, status_code=status, media_type=JSON)


def create_app(
    service: ExtenderService,
    routing: LeaderRouting | None = None,
    stale_views: Callable[[], Mapping[str, str]] = dict,
) -> FastAPI:
    """`routing`: with leader election, a replica that does not lead passes the verbs to the leader.
    `stale_views`: the views that may be missing changes, each with why (scheduler/state/informer.py)."""
    app = FastAPI(title="gpusched extender", docs_url=None, redoc_url=None)
    metrics = service.metrics
    # Each verb's (and outcome's) child of the request metrics, looked up once.
    timer, counter = functools.cache(metrics.request_seconds.labels), functools.cache(metrics.requests.labels)

    async def handle(
        verb: str,
        request: Request,
        kind: type[Any],
        run: Callable[[Any], Any],
        on_bad_input: Callable[[str], Response],
        blocking: bool = False,
    ) -> Response:
        started = time.perf_counter()
        outcome = "ok"
        try:
            raw = await request.body()
            if routing is not None and not routing.leading():
                answer, why = await routing.forward(request, raw)
                if answer is not None:
                    outcome = "forwarded"
                    return answer
                outcome = "no_leader"
                return on_bad_input(f"gpusched: {why}")
            stale = stale_views()
            if stale:
                outcome = "stale_view"
                return on_bad_input(f"gpusched: not deciding from a stale view of the cluster: {_views(stale)}")
            try:
                args = msgspec.json.decode(raw, type=kind)
            except msgspec.DecodeError as exc:
                outcome = "bad_request"
                return on_bad_input(f"gpusched: malformed {verb} request: {exc}")
            try:
                # bind waits on the API server: keep the event loop free for filter calls meanwhile
                result = await run_in_threadpool(run, args) if blocking else run(args)
                return _json(result)
            except wire.MalformedRequest as exc:
                outcome = "bad_request"
                return on_bad_input(f"gpusched: malformed {verb} request: {exc}")
            except Exception as exc:  # a bug must not crash kube-scheduler's cycle; say what broke
                outcome = "error"
                log.exception("%s failed", verb)
                return on_bad_input(f"gpusched: internal error in {verb}: {type(exc).__name__}: {exc}")
        finally:
            if outcome == "forwarded":  # the leader counts and times it
                metrics.forwarded.labels(verb).inc()
            else:
                timer(verb).observe(time.perf_counter() - started)
                counter(verb, outcome).inc()

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        return await handle(
            "filter",
            request,
            wire.SentArgs,
            service.filter,
            lambda msg: _json(wire.ExtenderFilterResult(error=msg)),
        )

    @app.post("/prioritize")
    async def prioritize(request: Request) -> Response:
        return await handle(
            "prioritize", request, wire.SentArgs, service.prioritize, lambda msg: _json({"Error": msg}, 400)
        )

    @app.post("/bind")
    async def bind(request: Request) -> Response:
        return await handle(
            "bind",
            request,
            wire.ExtenderBindingArgs,
            service.bind,
            lambda msg: _json(wire.ExtenderBindingResult(error=msg)),
            blocking=True,
        )

    @app.post("/preempt")
    async def preempt(request: Request) -> Response:
        return await handle(
            "preempt", request, wire.ExtenderPreemptionArgs, service.preempt, lambda msg: _json({"Error": msg}, 400)
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        stale = stale_views()
        if stale:
            return Response(f"stale views: {_views(stale)}", status_code=503, media_type="text/plain")
        if service.ready():
            return Response("ok", media_type="text/plain")
        return Response("informers have not synced, or no leader is elected", status_code=503, media_type="text/plain")

    @app.get("/metrics")
    async def metrics_() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/explain/{namespace}/{name}")
    async def explain(namespace: str, name: str) -> Response:
        out = service.explain(namespace, name)
        if out is None:
            return _json({"error": f"pod {namespace}/{name} is not a GPU pod known to gpusched"}, 404)
        return _json(out)

    return app


def _views(stale: Mapping[str, str]) -> str:
    """The stale views' names first (events are cut short), then why each is stale."""
    kinds = sorted(stale)
    return f"{', '.join(kinds)} ({'; '.join(f'{kind}: {stale[kind]}' for kind in kinds)})"
