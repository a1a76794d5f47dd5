"""The node's Hugging Face-layout weights cache: resolve a model reference offline, or write one.

gpusched places an inference pod where `org/name@revision` is already in the cache, so the server
must find it there without a network round trip: resolution goes through huggingface_hub with
`local_files_only=True` and fails with a clear error instead of starting a download.

Layout (huggingface_hub's): `<hub>/models--org--name/refs/<ref>` holds a commit hash,
`snapshots/<commit>/<file>` are relative links into `blobs/<sha256>`. `write_snapshot` writes the
same layout, for tests and the GPU check that generate their own models.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelNotCached(LookupError):
    """The reference is not in the local cache (and nothing will be downloaded)."""


@dataclass(frozen=True)
class ModelRef:
    """`org/name@revision`; the revision is a branch or tag (default main) or a commit hash."""

    repo_id: str
    revision: str = "main"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        repo_id, _, revision = text.strip().partition("@")
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"model reference {text!r} is not of the form org/name[@revision]")
        return cls(repo_id, revision or "main")

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    @property
    def folder_name(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


def hub_cache_dir(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The hub cache folder: explicit, else HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def resolve_snapshot(ref: ModelRef, cache_dir: Path) -> Path:
    """The snapshot folder of `ref` in `cache_dir`, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(cache_dir), local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        raise ModelNotCached(f"{ref} is not in the cache at {cache_dir}") from exc
    return Path(path)


def write_snapshot(
    cache_dir: Path, ref: ModelRef, files: Mapping[str, bytes | Path], commit: str | None = None
) -> Path:
    """Store `files` (name -> content or a file to move in) as one snapshot; returns its folder.

    A branch or tag revision gets `refs/<revision>` pointing at the commit (derived from the
    contents unless given); a commit-hash revision is used as the commit itself.
    """
    if commit is None:
        commit = ref.revision if _COMMIT.match(ref.revision) else _content_commit(files)
    repo = cache_dir / ref.folder_name
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            digest = _file_sha256(content)
            blob = blobs / digest
            if not blob.exists():
                shutil.move(str(content), blob)
        else:
            digest = hashlib.sha256(content).hexdigest()
            blob = blobs / digest
            if not blob.exists():
                blob.write_bytes(content)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(os.path.relpath(blob, target.parent))
    if not _COMMIT.match(ref.revision):
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref.revision).write_text(commit)
    return snapshot


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _content_commit(files: Mapping[str, bytes | Path]) -> str:
    digest = hashlib.sha1()
    for name in sorted(files):
        content = files[name]
        digest.update(name.encode())
        digest.update(content if isinstance(content, bytes) else str(content.stat().st_size).encode())
    return digest.hexdigest()
