"""The server's operations without HTTP: readiness, generation, adapters, metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from workloads.gpt import GPTConfig
from workloads.inference.cache import ModelRef, write_snapshot
from workloads.inference.lora import AdapterError
from workloads.inference.metrics import InferenceMetrics, endpoint_label
from workloads.inference.service import InferenceService, NotReady, ServerSettings, UnknownAdapter
from workloads.tools import make_model
from workloads.tools.make_model import write_adapter


def sample(service: InferenceService, name: str, labels: dict[str, str] | None = None) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels or {})


def test_not_ready_until_loaded(tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef) -> None:
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub))
    assert not service.ready and sample(service, "gpusched_inference_ready") == 0
    with pytest.raises(NotReady, match="loading"):
        service.generate([1], 1)
    with pytest.raises(NotReady):
        service.add_adapter("a", "/nowhere")
    loaded = service.load()
    assert service.ready and service.error is None
    assert sample(service, "gpusched_inference_ready") == 1
    load_time = sample(service, "gpusched_inference_weights_load_seconds", {"model": "acme/tiny-gpt@main"})
    assert load_time == loaded.stats.seconds > 0
    assert sample(service, "gpusched_inference_weights_bytes", {"model": "acme/tiny-gpt@main"}) == loaded.stats.bytes


def test_load_failure_is_kept_for_readyz(hub: Path) -> None:
    service = InferenceService(ServerSettings(model=ModelRef.parse("acme/absent"), hf_cache=hub))
    with pytest.raises(LookupError):
        service.load()
    assert service.error is not None and "ModelNotCached" in service.error
    with pytest.raises(NotReady, match="not in the cache"):
        service.generate([1], 1)


def test_background_load(tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef) -> None:
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub))
    service.load_in_background().join(timeout=60)
    assert service.ready


def test_generate_validates_and_counts(tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef) -> None:
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub, max_new_tokens=8))
    service.load()
    out = service.generate([1, 2, 3], 5)
    assert len(out) == 5 and out == service.generate([1, 2, 3], 5)
    assert sample(service, "gpusched_inference_generated_tokens_total") == 10
    for ids, n, message in (
        ([], 1, "empty"),
        ([64], 1, "outside the vocabulary"),
        ([1], 0, "from 1 to 8"),
        ([1], 9, "from 1 to 8"),
    ):
        with pytest.raises(ValueError, match=message):
            service.generate(ids, n)
    with pytest.raises(UnknownAdapter):
        service.generate([1], 1, adapter="nope")


def test_hot_load_replace_and_refuse(
    tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef, tiny_config: GPTConfig, tmp_path: Path
) -> None:
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub, adapter_root=tmp_path))
    service.load()
    base = service.generate([5, 6, 7], 8)
    strong = write_adapter(tmp_path / "strong", tiny_config, seed=3, std=0.4)
    info = service.add_adapter("s", str(strong))
    assert info.modules == (
        "layers.0.attn.q_proj",
        "layers.0.attn.v_proj",
        "layers.1.attn.q_proj",
        "layers.1.attn.v_proj",
    )
    tuned = service.generate([5, 6, 7], 8, adapter="s")
    assert tuned != base and service.generate([5, 6, 7], 8) == base
    # replacing "s" with a do-nothing adapter (B = 0) gives back the base outputs
    zero = write_adapter(tmp_path / "zero", tiny_config, targets=("up_proj",), seed=3, std=0.0)
    service.add_adapter("s", str(zero))
    assert service.generate([5, 6, 7], 8, adapter="s") == base
    # a broken replacement leaves the loaded one in place
    broken = tmp_path / "broken"
    shutil.copytree(strong, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError):
        service.add_adapter("s", str(broken))
    assert [a.name for a in service.adapters()] == ["s"] and service.adapters()[0].modules[0].endswith("up_proj")
    assert sample(service, "gpusched_inference_adapter_loads_total", {"result": "ok"}) == 2
    assert sample(service, "gpusched_inference_adapter_loads_total", {"result": "error"}) == 1
    assert sample(service, "gpusched_inference_adapters_loaded") == 1
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        service.add_adapter("x", "not-here")  # a folder below the root
    with pytest.raises(AdapterError, match="not org/name@revision"):
        service.add_adapter("x", "not a ref@main")
    with pytest.raises(AdapterError, match="not in the cache"):
        service.add_adapter("x", "acme/missing-adapter@main")


def test_adapters_from_the_cache_at_start(
    tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef, tiny_config: GPTConfig, tmp_path: Path
) -> None:
    folder = write_adapter(tmp_path / "src", tiny_config, seed=8, std=0.3)
    write_snapshot(hub, ModelRef.parse("acme/tiny-adapter"), {p.name: p.read_bytes() for p in folder.iterdir()})
    settings = ServerSettings(model=tiny_ref, hf_cache=hub, adapters=(("cached", "acme/tiny-adapter@main"),))
    service = InferenceService(settings)
    service.load()
    assert [a.name for a in service.adapters()] == ["cached"]

    bad = InferenceService(
        ServerSettings(model=tiny_ref, hf_cache=hub, adapters=(("x", str(tmp_path / "no")),), adapter_root=tmp_path)
    )
    with pytest.raises(AdapterError):
        bad.load()
    assert not bad.ready and bad.error is not None and "AdapterError" in bad.error


def test_metrics_registry_is_per_instance() -> None:
    one, two = InferenceMetrics(), InferenceMetrics()
    one.generated_tokens.inc(3)
    assert two.registry.get_sample_value("gpusched_inference_generated_tokens_total") == 0
    assert endpoint_label("/generate") == "/generate" and endpoint_label("/x/../etc") == "other"


def test_write_model_cli_round_trip(tmp_path: Path) -> None:
    make_model.main(
        [
            "--hf-cache",
            str(tmp_path / "hub"),
            "--model",
            "acme/cli@main",
            "--hidden-size",
            "16",
            "--heads",
            "2",
            "--adapter-dir",
            str(tmp_path / "adapter"),
        ]
    )
    service = InferenceService(
        ServerSettings(
            model=ModelRef.parse("acme/cli"),
            hf_cache=tmp_path / "hub",
            adapters=(("a", str(tmp_path / "adapter")),),
            adapter_root=tmp_path,
        )
    )
    service.load()
    assert service.loaded is not None and service.loaded.config.hidden_size == 16


@pytest.fixture
def adapter_root(tmp_path: Path, tiny_config: GPTConfig) -> Path:
    """An adapter root holding one good adapter, `good`, and a link out of the root, `escape`."""
    root = tmp_path / "adapters"
    write_adapter(root / "good", tiny_config, seed=4, std=0.2)
    outside = write_adapter(tmp_path / "outside", tiny_config, seed=4, std=0.2)
    (root / "escape").symlink_to(outside)
    return root


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/etc", "outside the adapter root"),
        ("../outside", "may not contain '..'"),
        ("good/../../outside", "may not contain '..'"),
        ("escape", "outside the adapter root"),  # a link inside the root that leads out
        ("{outside}", "outside the adapter root"),  # an absolute folder elsewhere, adapter and all
    ],
)
def test_adapter_sources_are_confined_to_the_root(
    tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef, adapter_root: Path, source: str, message: str
) -> None:
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub, adapter_root=adapter_root))
    service.load()
    with pytest.raises(AdapterError, match=re.escape(message)):
        service.add_adapter("x", source.format(outside=adapter_root.parent / "outside"))
    assert sample(service, "gpusched_inference_adapter_loads_total", {"result": "error"}) == 1
    assert service.adapters() == []
    # Below the root, absolute or relative, is fine.
    assert service.add_adapter("g", "good").source == str(adapter_root / "good")
    assert service.add_adapter("g", str(adapter_root / "good")).source == str(adapter_root / "good")


def _corrupt_weights(folder: Path) -> None:
    (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")


def _tensors(folder: Path, change: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = (
        tensors[first].to(torch.int32) if change == "int" else torch.full_like(tensors[first], float("nan"))
    )
    save_file(tensors, path)


def _config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: _config(f, lora_alpha=float("nan")), "lora_alpha must be a finite number"),  # JSON NaN
        (lambda f: _config(f, lora_alpha="nan"), "lora_alpha must be a finite number"),
        (lambda f: _config(f, lora_alpha=float("inf")), "lora_alpha must be a finite number"),
        (lambda f: (f / "adapter_config.json").write_text("[1, 2]"), "expected a JSON object, got list"),
        (lambda f: (f / "adapter_config.json").write_bytes(b"\xff\xfe"), "adapter_config.json"),
        (_corrupt_weights, "not a readable safetensors file"),
        (lambda f: _tensors(f, "int"), "not floating point"),
        (lambda f: _tensors(f, "nan"), "NaN or infinite"),
    ],
)
def test_malformed_adapters_are_refused_and_counted(
    tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef, adapter_root: Path, damage: Any, message: str
) -> None:
    damage(adapter_root / "good")
    service = InferenceService(ServerSettings(model=tiny_ref, hf_cache=hub, adapter_root=adapter_root))
    service.load()
    with pytest.raises(AdapterError, match=re.escape(message)):
        service.add_adapter("x", "good")
    assert sample(service, "gpusched_inference_adapter_loads_total", {"result": "error"}) == 1
    assert service.adapters() == []
