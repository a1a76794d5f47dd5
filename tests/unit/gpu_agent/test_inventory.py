"""Cache inventory on real folders: a Hugging Face-layout cache, LoRA adapter folders, the disk probe."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gpu_agent.inventory import (
    DiskProbe,
    LoraEntry,
    ModelEntry,
    largest_file,
    measure_read,
    scan_caches,
    scan_hf_cache,
    scan_lora_dirs,
)

REV_A = "0e9e39f249a16976918f6564b8830bc894c89659"
REV_B = "5206a32e0bd3067aef1ce90f5528ade7d866253f"
REV_L = "1a2b3c4d5e6f708192a3b4c5d6e7f80912a3b4c5"


def add_revision(
    cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = (), kind: str = "models"
) -> None:
    """One revision in the layout huggingface_hub writes: blobs by hash, snapshot symlinks, refs."""
    root = cache / f"{kind}--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for name, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "hub"
    config = b'{"architectures": ["LlamaForCausalLM"]}'
    add_revision(
        cache,
        "meta-llama/Llama-3.1-8B",
        REV_A,
        {"config.json": config, "model-00001-of-00002.safetensors": b"a" * 3000, "tokenizer.json": b"t" * 500},
        refs=("main",),
    )
    # An older revision sharing the config blob and adding its own weights.
    add_revision(cache, "meta-llama/Llama-3.1-8B", REV_B, {"config.json": config, "model.safetensors": b"b" * 2000})
    adapter = json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B", "r": 16}).encode()
    add_revision(
        cache,
        "acme/sql-lora",
        REV_L,
        {"adapter_config.json": adapter, "adapter_model.safetensors": b"l" * 700},
        refs=("main", "v1"),
    )
    add_revision(cache, "acme/eval-set", REV_A, {"data.jsonl": b"{}\n" * 10}, kind="datasets")
    return cache


def test_hf_cache_models_revisions_refs_and_adapters(hf_cache: Path) -> None:
    scanned = scan_hf_cache(hf_cache)
    assert scanned is not None
    models, adapters, model_bytes, lora_bytes = scanned
    config_size = len(b'{"architectures": ["LlamaForCausalLM"]}')
    rev_a = config_size + 3000 + 500
    rev_b = config_size + 2000
    assert sorted(models, key=lambda m: m.id) == [
        ModelEntry(f"meta-llama/Llama-3.1-8B@{REV_A}", rev_a),
        ModelEntry(f"meta-llama/Llama-3.1-8B@{REV_B}", rev_b),
        ModelEntry("meta-llama/Llama-3.1-8B@main", rev_a),
    ]
    assert model_bytes == config_size + 3000 + 500 + 2000  # the shared blob counts once
    adapter_size = len(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B", "r": 16})) + 700
    assert sorted(a.id for a in adapters) == [f"acme/sql-lora@{REV_L}", "acme/sql-lora@main", "acme/sql-lora@v1"]
    assert {a.base_model for a in adapters} == {"meta-llama/Llama-3.1-8B"}
    assert {a.bytes for a in adapters} == {adapter_size} and lora_bytes == adapter_size


def test_missing_or_foreign_cache_is_unknown(tmp_path: Path) -> None:
    assert scan_hf_cache(tmp_path / "nope") is None
    (tmp_path / "not-a-cache").mkdir()
    (tmp_path / "not-a-cache" / "file.txt").write_text("x")
    assert scan_hf_cache(tmp_path / "not-a-cache") == ([], [], 0, 0)  # an empty cache, not an error


def test_lora_folders(tmp_path: Path) -> None:
    root = tmp_path / "lora"
    a = root / "customer-a" / "support-bot"
    a.mkdir(parents=True)
    (a / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "mistralai/Mistral-7B-v0.3"}))
    (a / "adapter_model.safetensors").write_bytes(b"w" * 4096)
    (a / "checkpoint").mkdir()
    (a / "checkpoint" / "extra.bin").write_bytes(b"x" * 100)
    b = root / "summarizer"
    b.mkdir()
    (b / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}))
    (b / "adapter_model.bin").write_bytes(b"w" * 1000)
    os.link(b / "adapter_model.bin", b / "same-inode.bin")  # counted once
    broken = root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    deep = root / "1" / "2" / "3" / "4" / "5"
    deep.mkdir(parents=True)
    (deep / "adapter_config.json").write_text("{}")
    found = scan_lora_dirs([root])
    assert found is not None
    config_a = len(json.dumps({"base_model_name_or_path": "mistralai/Mistral-7B-v0.3"}))
    config_b = len(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}))
    assert sorted(found, key=lambda e: e.id) == [
        LoraEntry("customer-a/support-bot", "mistralai/Mistral-7B-v0.3", config_a + 4096 + 100),
        LoraEntry("summarizer", "meta-llama/Llama-3.1-8B", config_b + 1000),
    ]
    assert scan_lora_dirs([tmp_path / "missing"]) is None


def test_scan_caches_merges_adapters(hf_cache: Path, tmp_path: Path) -> None:
    root = tmp_path / "lora"
    (root / "x").mkdir(parents=True)
    (root / "x" / "adapter_config.json").write_text('{"base_model_name_or_path": "b"}')
    scan = scan_caches(hf_cache, [root])
    assert scan.models is not None and len(scan.models) == 3
    assert scan.lora_adapters is not None
    assert [a.id for a in scan.lora_adapters] == [
        f"acme/sql-lora@{REV_L}",
        "acme/sql-lora@main",
        "acme/sql-lora@v1",
        "x",
    ]
    nothing = scan_caches(None, [])
    assert nothing.models is None and nothing.lora_adapters is None


def test_disk_probe_reads_the_largest_file_bounded_and_rarely(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 10)
    big = tmp_path / "sub" / "big.safetensors"
    big.parent.mkdir()
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    (tmp_path / "link").symlink_to(big)
    assert largest_file([tmp_path]) == big
    assert measure_read(tmp_path / "small", 1 << 20) is None  # too little to time

    ticks = iter([0.0, 0.5])
    assert measure_read(big, 2 * 1024 * 1024, clock=lambda: next(ticks)) == pytest.approx(4 * 1024 * 1024)

    now = [1000.0]
    probe = DiskProbe([tmp_path], interval=3600, max_bytes=2 * 1024 * 1024, clock=lambda: now[0])
    first = probe.sample()
    assert first is not None and first > 0 and probe.measurements == 1
    now[0] += 60
    assert probe.sample() == first and probe.measurements == 1  # rate-limited
    now[0] += 3600
    probe.sample()
    assert probe.measurements == 2
    assert DiskProbe([tmp_path / "none"]).sample() is None
    assert DiskProbe([tmp_path], max_bytes=0).sample() is None


@pytest.mark.parametrize(
    ("file_bytes", "probe_bytes"),
    [(8 << 20, 2 << 20), (3 << 20, 2 << 20), (2 << 20, 8 << 20)],
)
def test_disk_probe_drops_only_the_range_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_bytes: int, probe_bytes: int
) -> None:
    """Finding 10: posix_fadvise(fd, 0, 0, DONTNEED) evicts the whole file (length 0 means to the
    end); the probe must name the bytes it reads. The real call still runs."""
    big = tmp_path / "weights.safetensors"
    big.write_bytes(b"w" * file_bytes)
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    measure_read(big, probe_bytes)
    assert calls == [(0, probe_bytes, os.POSIX_FADV_DONTNEED)]
    assert all(length > 0 for _, length, _ in calls)
