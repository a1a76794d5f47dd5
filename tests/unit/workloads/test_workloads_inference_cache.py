"""Resolving models in the node's Hugging Face-layout cache, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workloads.gpt import GPTConfig
from workloads.inference.cache import ModelNotCached, ModelRef, hub_cache_dir, resolve_snapshot, write_snapshot
from workloads.tools.make_model import write_model


@pytest.mark.parametrize(
    ("text", "repo", "rev"),
    [
        ("org/name", "org/name", "main"),
        ("org/name@v1.0", "org/name", "v1.0"),
        ("meta-llama/Llama-3.1-8B@" + "a" * 40, "meta-llama/Llama-3.1-8B", "a" * 40),
    ],
)
def test_model_ref_parse(text: str, repo: str, rev: str) -> None:
    ref = ModelRef.parse(text)
    assert (ref.repo_id, ref.revision) == (repo, rev)
    assert ModelRef.parse(str(ref)) == ref
    assert ref.folder_name == "models--" + repo.replace("/", "--")


@pytest.mark.parametrize("text", ["", "name", "org/", "/name", "a/b/c", "org/na me"])
def test_model_ref_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="org/name"):
        ModelRef.parse(text)


def test_hub_cache_dir_precedence(tmp_path: Path) -> None:
    assert hub_cache_dir("/x", {"HF_HUB_CACHE": "/y"}) == Path("/x")
    assert hub_cache_dir(None, {"HF_HUB_CACHE": "/y", "HF_HOME": "/z"}) == Path("/y")
    assert hub_cache_dir(None, {"HF_HOME": "/z"}) == Path("/z/hub")
    assert hub_cache_dir(None, {}) == Path.home() / ".cache/huggingface/hub"


def test_layout_matches_huggingface_hub(tiny_snapshot: Path, hub: Path) -> None:
    repo = hub / "models--acme--tiny-gpt"
    commit = (repo / "refs" / "main").read_text()
    assert tiny_snapshot == repo / "snapshots" / commit
    weights = tiny_snapshot / "model.safetensors"
    assert weights.is_symlink() and not os.path.isabs(os.readlink(weights))
    assert weights.resolve().parent == (repo / "blobs").resolve()
    assert not any(p.name.startswith(".staging") for p in hub.iterdir())
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub)
    (cached,) = info.repos
    assert cached.repo_id == "acme/tiny-gpt" and cached.size_on_disk > 0
    assert {r.commit_hash for r in cached.revisions} == {commit}


def test_resolve_by_ref_and_by_commit(tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef) -> None:
    assert resolve_snapshot(tiny_ref, hub) == tiny_snapshot
    assert resolve_snapshot(ModelRef(tiny_ref.repo_id, tiny_snapshot.name), hub) == tiny_snapshot


def test_missing_model_or_revision_is_not_downloaded(tiny_snapshot: Path, hub: Path, tiny_ref: ModelRef) -> None:
    with pytest.raises(ModelNotCached, match="acme/other@main"):
        resolve_snapshot(ModelRef.parse("acme/other"), hub)
    with pytest.raises(ModelNotCached):
        resolve_snapshot(ModelRef(tiny_ref.repo_id, "v2"), hub)
    with pytest.raises(ModelNotCached):
        resolve_snapshot(ModelRef(tiny_ref.repo_id, "f" * 40), hub)


def test_commit_revision_and_rewrites(hub: Path) -> None:
    ref = ModelRef("acme/files", "c" * 40)
    snap = write_snapshot(hub, ref, {"a.txt": b"one", "sub/b.txt": b"two"})
    assert snap.name == "c" * 40 and not (hub / ref.folder_name / "refs").exists()
    assert (snap / "sub" / "b.txt").read_bytes() == b"two"
    write_snapshot(hub, ref, {"a.txt": b"three"})
    assert (snap / "a.txt").read_bytes() == b"three"


def test_sharded_model_has_an_index(hub: Path, tiny_config: GPTConfig) -> None:
    snap = write_model(hub, ModelRef.parse("acme/sharded"), tiny_config, shard_bytes=20_000)
    shards = sorted(p.name for p in snap.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert (snap / "model.safetensors.index.json").exists()
