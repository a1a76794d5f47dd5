"""The inference server over HTTP: in-process (Starlette's TestClient, lifespan included), and
once as the real `python -m workloads.inference.server` process under uvicorn, on a tiny model
that the test generates into a temporary Hugging Face-layout cache."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
    service = InferenceService(ServerSettings(model=REF, hf_cache=hub, max_new_tokens=32))
    with TestClient(create_app(service)) as client:
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
        assert client.get("/healthz").status_code == 200
        assert client.post("/generate", json={"token_ids": [1]}).status_code == 503


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_process(hub: Path, adapter_dir: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "workloads.inference.server",
        "--model",
        str(REF),
        "--hf-cache",
        str(hub),
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--adapter",
        f"support={adapter_dir}",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        adapters = httpx.get(f"{base_url}/adapters", timeout=5).json()
        assert [a["name"] for a in adapters] == ["support"]
        body = {"token_ids": PROMPT, "max_new_tokens": 6, "adapter": "support"}
        tuned = httpx.post(f"{base_url}/generate", json=body, timeout=30).json()["token_ids"]
        assert tuned == greedy_generate(merged_model(hub, adapter_dir), PROMPT, 6)
        assert "gpusched_inference_weights_load_seconds{" in httpx.get(f"{base_url}/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
