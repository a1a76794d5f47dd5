"""HTTP front of the model server: `create_app(service)` and `python -m workloads.inference.server`.

Endpoints: POST /generate (greedy tokens for a list of token ids, optionally through a LoRA
adapter), POST /adapters (hot-load one), GET /adapters, GET /healthz (the process is up),
GET /readyz (weights loaded: the pod may take traffic), GET /metrics (Prometheus).

The weights load on a background thread at start-up, so the kubelet's liveness probe passes while
a large model streams in and the readiness probe holds traffic back until it is done. If the load
fails, /healthz answers 503 and the process exits with status 1, so the kubelet restarts the
container rather than keep a pod that will never be ready.

The probes, /metrics and GET /adapters are answered on the event loop and never wait for a thread:
generation runs on a thread of its own (one at a time, as the model allows), so a queue of
/generate requests cannot delay the kubelet's probes (timeout 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from workloads.inference.cache import ModelRef, hub_cache_dir
from workloads.inference.lora import AdapterError
from workloads.inference.metrics import endpoint_label
from workloads.inference.service import InferenceService, NotReady, ServerSettings, UnknownAdapter

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class GenerateRequest(BaseModel):
    token_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(default=16, ge=1)
    adapter: str | None = None


class GenerateResponse(BaseModel):
    token_ids: list[int]
    model: str
    adapter: str | None


class AdapterRequest(BaseModel):
    name: str = Field(pattern=ADAPTER_NAME)
    source: str = Field(
        min_length=1, description="folder below the adapter root, or org/name@revision in the node's cache"
    )


class AdapterResponse(BaseModel):
    name: str
    rank: int
    alpha: float
    scale: float
    modules: list[str]
    bytes: int
    source: str
    load_seconds: float


def create_app(
    service: InferenceService, load_on_startup: bool = True, on_load_failure: Callable[[], None] | None = None
) -> FastAPI:
    """The ASGI app over `service`; with `load_on_startup`, the lifespan starts the weights load
    (and calls `on_load_failure` if it fails)."""
    # One thread: generation holds the model's lock anyway, and queued requests wait here rather
    # than in the thread pool that the rest of the app shares.
    generate_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_on_startup and not service.ready:
            service.load_in_background(on_load_failure)
        yield
        generate_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gpusched reference inference server", lifespan=lifespan)
    app.state.service = service
    metrics = service.metrics

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        endpoint = endpoint_label(request.url.path)
        start = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            metrics.requests.labels(endpoint, str(code)).inc()
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, str | None]:
        if service.failed:
            response.status_code = 503
            return {"status": "failed", "error": service.error}
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str | None]:
        if service.ready:
            return {"status": "ready", "model": str(service.settings.model)}
        response.status_code = 503
        return {"status": "failed" if service.error else "loading", "error": service.error}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> GenerateResponse:
        try:
            call = partial(service.generate, req.token_ids, req.max_new_tokens, req.adapter)
            out = await asyncio.get_running_loop().run_in_executor(generate_pool, call)
        except NotReady as exc:
            raise HTTPException(503, f"not ready: {exc}") from None
        except UnknownAdapter:
            raise HTTPException(404, f"adapter {req.adapter!r} is not loaded") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return GenerateResponse(token_ids=out, model=str(service.settings.model), adapter=req.adapter)

    @app.post("/adapters")
    async def add_adapter(req: AdapterRequest) -> AdapterResponse:
        try:
            info = await run_in_threadpool(service.add_adapter, req.name, req.source)
        except NotReady as exc:
            raise HTTPException(503, f"not ready: {exc}") from None
        except AdapterError as exc:
            raise HTTPException(400, str(exc)) from None
        return AdapterResponse(**{**asdict(info), "modules": list(info.modules)})

    @app.get("/adapters")
    async def list_adapters() -> list[AdapterResponse]:
        return [AdapterResponse(**{**asdict(i), "modules": list(i.modules)}) for i in service.adapters()]

    return app


def _adapter_arg(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FOLDER or NAME=org/name@revision")
    return name, source


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m workloads.inference.server", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--model", required=True, type=ModelRef.parse, help="org/name@revision in the node's cache")
    ap.add_argument("--hf-cache", help="hub cache folder (default: HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--max-new-tokens", type=int, default=256, help="upper bound a request may ask for")
    ap.add_argument(
        "--adapter",
        action="append",
        type=_adapter_arg,
        default=[],
        help="NAME=FOLDER or NAME=org/name@rev, loaded at start (repeatable)",
    )
    ap.add_argument("--adapter-root", default="/adapters", help="adapter folders must lie below it (default /adapters)")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="info")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        model=args.model,
        hf_cache=hub_cache_dir(args.hf_cache),
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        adapters=tuple(args.adapter),
        adapter_root=Path(args.adapter_root),
    )
    import uvicorn

    service = InferenceService(settings)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(service, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    server.run()
    if service.failed:
        logging.getLogger("gpusched.inference").error("exiting: the weights did not load: %s", service.error)
        sys.exit(1)


if __name__ == "__main__":
    main()
