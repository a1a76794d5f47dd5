"""The inference server over HTTP: in-process (Starlette's TestClient, lifespan included), and
once as the real `python -m workloads.inference.server` process under uvicorn, on a tiny model
that the test generates into a temporary Hugging Face-layout cache."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from workloads.gpt import GPT, GPTConfig, greedy_generate
from workloads.inference.cache import ModelRef
from workloads.inference.loader import load_model
from workloads.inference.lora import merged_weight, read_adapter
from workloads.inference.server import create_app
from workloads.inference.service import InferenceService, ServerSettings
from workloads.tools.make_model import write_adapter, write_model

REPO = Path(__file__).resolve().parents[2]
TINY = GPTConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
)
REF = ModelRef.parse("acme/tiny-gpt@main")
PROMPT = [3, 1, 4, 1, 5]


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    write_model(tmp_path / "hub", REF, TINY, seed=21)
    return tmp_path / "hub"


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    return write_adapter(
        tmp_path / "adapters" / "support",
        TINY,
        targets=("q_proj", "v_proj", "down_proj"),
        seed=5,
        std=0.3,
        base_model=REF.repo_id,
    )


@pytest.fixture
def client(hub: Path) -> Iterator[TestClient]:
    """The app as deployed: the lifespan starts the weights load; wait until /readyz says so."""
    settings = ServerSettings(model=REF, hf_cache=hub, max_new_tokens=32, adapter_root=hub.parent)
    with TestClient(create_app(InferenceService(settings))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.02)
        yield client


def merged_model(hub: Path, folder: Path) -> GPT:
    """What the adapter should amount to: the base with W + scale * B @ A in each targeted layer."""
    model = load_model(next((hub / REF.folder_name / "snapshots").iterdir())).model
    merged = copy.deepcopy(model)
    adapter = read_adapter(folder, "reference")
    with torch.no_grad():
        for path, (a, b) in adapter.weights.items():
            layer = merged.get_submodule(path)
            assert isinstance(layer, nn.Linear)
            layer.weight.copy_(merged_weight(layer, a, b, adapter.scale))
    return merged


def test_generate_and_hot_load_an_adapter(client: TestClient, hub: Path, adapter_dir: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": str(REF)}
    base = client.post("/generate", json={"token_ids": PROMPT, "max_new_tokens": 12})
    assert base.status_code == 200
    assert base.json() == {"token_ids": base.json()["token_ids"], "model": str(REF), "adapter": None}
    assert len(base.json()["token_ids"]) == 12
    assert client.post("/generate", json={"token_ids": PROMPT, "max_new_tokens": 12}).json() == base.json()

    assert client.get("/adapters").json() == []
    added = client.post("/adapters", json={"name": "support", "source": str(adapter_dir)})
    assert added.status_code == 200, added.text
    info = added.json()
    assert info["name"] == "support" and info["rank"] == 4 and info["scale"] == 2.0
    assert len(info["modules"]) == 6 and info["bytes"] > 0
    assert [a["name"] for a in client.get("/adapters").json()] == ["support"]

    tuned = client.post("/generate", json={"token_ids": PROMPT, "max_new_tokens": 12, "adapter": "support"})
    assert tuned.status_code == 200 and tuned.json()["adapter"] == "support"
    assert tuned.json()["token_ids"] != base.json()["token_ids"]
    assert tuned.json()["token_ids"] == greedy_generate(merged_model(hub, adapter_dir), PROMPT, 12)
    # the base model is still served unchanged next to the adapter
    assert client.post("/generate", json={"token_ids": PROMPT, "max_new_tokens": 12}).json() == base.json()


def test_bad_requests_get_clear_answers(client: TestClient, tmp_path: Path) -> None:
    cases = [
        ({"token_ids": []}, 422),
        ({"token_ids": [64]}, 422),
        ({"token_ids": [1], "max_new_tokens": 33}, 422),
        ({"token_ids": ["a"]}, 422),
        ({"token_ids": [1], "adapter": "missing"}, 404),
    ]
    for body, code in cases:
        response = client.post("/generate", json=body)
        assert response.status_code == code, (body, response.text)
    assert client.post("/adapters", json={"name": "x", "source": str(tmp_path / "none")}).status_code == 400
    assert client.post("/adapters", json={"name": "../x", "source": str(tmp_path)}).status_code == 422
    assert (
        "no adapter_config.json"
        in client.post("/adapters", json={"name": "x", "source": str(tmp_path)}).json()["detail"]
    )


def test_adapters_outside_the_root_or_malformed_get_400_and_are_counted(client: TestClient, tmp_path: Path) -> None:
    nan_alpha = write_adapter(tmp_path / "nan-alpha", TINY, seed=5, std=0.3)
    config = json.loads((nan_alpha / "adapter_config.json").read_text())
    (nan_alpha / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": float("nan")}))
    corrupt = write_adapter(tmp_path / "corrupt", TINY, seed=5, std=0.3)
    (corrupt / "adapter_model.safetensors").write_bytes(b"garbage")
    cases = [
        ("/etc", "outside the adapter root"),
        ("../../etc", "may not contain '..'"),
        (str(nan_alpha), "lora_alpha must be a finite number"),
        ("corrupt", "not a readable safetensors file"),
    ]
    for source, message in cases:
        answer = client.post("/adapters", json={"name": "x", "source": source})
        assert answer.status_code == 400 and message in answer.json()["detail"], (source, answer.text)
    assert 'gpusched_inference_adapter_loads_total{result="error"} 4.0' in client.get("/metrics").text
    assert client.get("/adapters").json() == []


def test_metrics_expose_load_time_and_requests(client: TestClient) -> None:
    client.post("/generate", json={"token_ids": [1, 2], "max_new_tokens": 3})
    client.post("/generate", json={"token_ids": []})
    client.get("/no/such/path")
    text = client.get("/metrics").text
    load_line = next(
        line
        for line in text.splitlines()
        if line.startswith('gpusched_inference_weights_load_seconds{model="acme/tiny-gpt@main"}')
    )
    assert float(load_line.split()[-1]) > 0
    assert 'gpusched_inference_requests_total{code="200",endpoint="/generate"} 1.0' in text
    assert 'gpusched_inference_requests_total{code="422",endpoint="/generate"} 1.0' in text
    assert 'gpusched_inference_requests_total{code="404",endpoint="other"} 1.0' in text
    assert "gpusched_inference_generated_tokens_total 3.0" in text
    assert "gpusched_inference_ready 1.0" in text
    assert 'gpusched_inference_request_duration_seconds_count{endpoint="/generate"} 2.0' in text


def test_unready_while_the_model_is_missing(tmp_path: Path) -> None:
    service = InferenceService(ServerSettings(model=ModelRef.parse("acme/absent"), hf_cache=tmp_path))
    with TestClient(create_app(service)) as client:
        deadline = time.monotonic() + 30
        while service.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "not in the cache" in ready.json()["error"]
        # It will never be ready: liveness fails too, so the kubelet restarts the container.
        health = client.get("/healthz")
        assert health.status_code == 503 and "not in the cache" in health.json()["error"]
        assert client.post("/generate", json={"token_ids": [1]}).status_code == 503


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(hub: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m workloads.inference.server` on a free local port; the process and its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "workloads.inference.server", "--hf-cache", str(hub), "--device", "cpu"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def wait_ready(proc: subprocess.Popen[str], base_url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "server did not become ready"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def test_server_process(hub: Path, adapter_dir: Path) -> None:
    args = ["--model", str(REF), "--adapter-root", str(adapter_dir.parent), "--adapter", f"support={adapter_dir}"]
    with server_process(hub, *args) as (proc, base_url):
        wait_ready(proc, base_url)
        adapters = httpx.get(f"{base_url}/adapters", timeout=5).json()
        assert [a["name"] for a in adapters] == ["support"]
        body = {"token_ids": PROMPT, "max_new_tokens": 6, "adapter": "support"}
        tuned = httpx.post(f"{base_url}/generate", json=body, timeout=30).json()["token_ids"]
        assert tuned == greedy_generate(merged_model(hub, adapter_dir), PROMPT, 6)
        assert "gpusched_inference_weights_load_seconds{" in httpx.get(f"{base_url}/metrics", timeout=5).text


# A model whose generation of 64 tokens takes about half a second on one core (no KV cache), so 50
# queued requests keep the server busy for far longer than the probes below take.
SLOW = GPTConfig(
    vocab_size=512,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=512,
)


def generated_tokens(metrics: str) -> float:
    """gpusched_inference_generated_tokens_total from a /metrics page (0 before the first)."""
    for line in metrics.splitlines():
        if line.startswith("gpusched_inference_generated_tokens_total "):
            return float(line.split()[1])
    return 0.0


def test_probes_answer_within_a_second_behind_50_slow_generations(tmp_path: Path) -> None:
    """The kubelet's probes time out after 1 s; /generate requests queue behind one another."""
    hub = tmp_path / "hub"
    write_model(hub, REF, SLOW, seed=3)

    async def load_and_probe(base_url: str) -> tuple[list[float], int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
            body = {"token_ids": PROMPT, "max_new_tokens": 64}
            generations = [asyncio.create_task(client.post("/generate", json=body)) for _ in range(50)]
            # The queue has formed once the first generation is done (the other 49 wait behind it).
            # At least 64 tokens: a poll may come after the second generation is done too.
            deadline = time.monotonic() + 240
            while generated_tokens((await client.get("/metrics")).text) < 64:
                assert not any(g.done() and g.exception() for g in generations)
                assert time.monotonic() < deadline, "no generation finished in 240 s"
                await asyncio.sleep(0.1)
            seconds = []
            for path in ("/healthz", "/readyz") * 5:
                start = time.perf_counter()
                try:
                    answer = await client.get(path, timeout=5)
                except httpx.TimeoutException:
                    seconds.append(math.inf)
                    continue
                seconds.append(time.perf_counter() - start)
                assert answer.status_code == 200, answer.text
            waiting = sum(not g.done() for g in generations)
            for g in generations:
                g.cancel()
            await asyncio.gather(*generations, return_exceptions=True)
            return seconds, waiting

    with server_process(hub, "--model", str(REF)) as (proc, base_url):
        wait_ready(proc, base_url)
        seconds, waiting = asyncio.run(load_and_probe(base_url))
    assert waiting >= 40, f"only {waiting} generations were still queued: the probes were not under load"
    assert max(seconds) < 1.0, f"probe answers took {[round(s, 3) for s in seconds]} s"


def test_a_failed_weights_load_ends_the_process(tmp_path: Path) -> None:
    """A pod that can never become ready must not stay alive: the server exits with status 1."""
    with server_process(tmp_path / "empty-hub", "--model", "acme/absent@main") as (proc, _):
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "not in the cache" in output and "exiting: the weights did not load" in output
