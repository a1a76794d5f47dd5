"""What is already on the node's disks: model weights, LoRA adapters, and how fast the disk reads.

- **Models**: a Hugging Face-layout cache (``models--org--name/{blobs,refs,snapshots}``) scanned
  offline with ``huggingface_hub.scan_cache_dir``. Each cached revision is reported as
  ``org/name@<commit>`` and, for each ref pointing at it, ``org/name@<ref>`` (``@main``), with
  the bytes of the blobs that revision links to. Repos whose snapshot holds an
  ``adapter_config.json`` are LoRA adapters, not models, and are reported as such.
- **LoRA adapters**: folders holding ``adapter_config.json`` under the configured adapter roots
  (searched a few levels deep); the id is the folder's path below its root, the base model is
  the config's ``base_model_name_or_path``, the bytes are the folder's files.
- **Disk read throughput**: one bounded sequential read (default 256 MiB) of the largest file in
  the caches, at most once per probe interval (default an hour). The pages of the range it is
  about to read (and only those) are dropped from the page cache first (``posix_fadvise(DONTNEED)``
  over the bytes read) so the figure is the disk's, not memory's; the cost is that those pages
  must be read again by whoever next needs them, which is why the read is bounded and rare.

- **Filesystems**: free and total bytes (``statvfs``: blocks available to unprivileged users,
  and all blocks, times the fragment size) of the model cache's filesystem and of the container
  runtime's image filesystem (whose mount point the CRI's ImageFsInfo names).

Anything that cannot be read (no cache folder, no huggingface_hub, an unreadable config) is left
out of the report (None) rather than reported as empty.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
LORA_SEARCH_DEPTH = 4
PROBE_CHUNK = 8 * 1024 * 1024
PROBE_MIN_BYTES = 1024 * 1024
PROBE_MAX_FILES = 100_000


@dataclass(frozen=True)
class ModelEntry:
    id: str  # org/name@revision
    bytes: int


@dataclass(frozen=True)
class LoraEntry:
    id: str
    base_model: str
    bytes: int


@dataclass(frozen=True)
class CacheScan:
    models: tuple[ModelEntry, ...] | None
    lora_adapters: tuple[LoraEntry, ...] | None
    model_bytes: int = 0  # every blob of every cached model repo, each counted once
    lora_bytes: int = 0


@dataclass(frozen=True)
class FsUsage:
    free_bytes: int
    total_bytes: int


def filesystem_usage(path: Path) -> FsUsage | None:
    """Free (available to unprivileged writers) and total bytes of the filesystem holding ``path``;
    None when ``path`` cannot be reached."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        log.debug("statvfs %s: %s", path, exc)
        return None
    return FsUsage(free_bytes=int(st.f_bavail) * int(st.f_frsize), total_bytes=int(st.f_blocks) * int(st.f_frsize))


def default_hf_cache() -> Path:
    """Where huggingface_hub puts its cache: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _read_adapter_config(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("unreadable LoRA adapter config %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symlinks followed, each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def scan_hf_cache(cache_dir: Path) -> tuple[list[ModelEntry], list[LoraEntry], int, int] | None:
    """(models, adapters, model bytes, adapter bytes) of a Hugging Face cache; None if unreadable."""
    if not cache_dir.is_dir():
        return None
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        log.warning("huggingface_hub is not installed; cached models are not reported")
        return None
    try:
        info = scan_cache_dir(cache_dir)
    except Exception as exc:  # a cache folder that is not an HF cache raises CacheNotFound/ValueError
        log.warning("cannot scan Hugging Face cache %s: %s", cache_dir, exc)
        return None
    for warning in info.warnings:
        log.debug("Hugging Face cache: %s", warning)
    models: list[ModelEntry] = []
    adapters: list[LoraEntry] = []
    model_bytes = lora_bytes = 0
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        is_adapter = False
        for revision in repo.revisions:
            names = [revision.commit_hash, *sorted(r for r in revision.refs if not r.startswith("refs/"))]
            config_path = revision.snapshot_path / ADAPTER_CONFIG
            config = _read_adapter_config(config_path) if config_path.is_file() else None
            for name in names:
                ident = f"{repo.repo_id}@{name}"
                if config is not None:
                    base = str(config.get("base_model_name_or_path") or "")
                    adapters.append(LoraEntry(ident, base, revision.size_on_disk))
                else:
                    models.append(ModelEntry(ident, revision.size_on_disk))
            is_adapter = is_adapter or config is not None
        if is_adapter:
            lora_bytes += repo.size_on_disk
        else:
            model_bytes += repo.size_on_disk
    return models, adapters, model_bytes, lora_bytes


def scan_lora_dirs(roots: Iterable[Path], depth: int = LORA_SEARCH_DEPTH) -> list[LoraEntry] | None:
    """Adapter folders (with ``adapter_config.json``) under each root; None if no root exists."""
    found: list[LoraEntry] = []
    any_root = False
    for root in roots:
        if not root.is_dir():
            log.warning("LoRA adapter folder %s does not exist", root)
            continue
        any_root = True
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            rel = Path(dirpath).relative_to(root)
            if ADAPTER_CONFIG in filenames:
                config = _read_adapter_config(Path(dirpath) / ADAPTER_CONFIG)
                if config is not None:
                    ident = rel.as_posix() if rel.parts else root.name
                    base = str(config.get("base_model_name_or_path") or "")
                    found.append(LoraEntry(ident, base, _folder_bytes(Path(dirpath))))
                dirnames.clear()  # an adapter's own subfolders are part of it
            elif len(rel.parts) >= depth:
                dirnames.clear()
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found if any_root else None


def scan_caches(hf_cache: Path | None, lora_roots: Sequence[Path]) -> CacheScan:
    hf = scan_hf_cache(hf_cache) if hf_cache is not None else None
    lora = scan_lora_dirs(lora_roots) if lora_roots else None
    adapters: list[LoraEntry] | None = None
    if hf is not None or lora is not None:
        adapters = [*(hf[1] if hf else ()), *(lora or ())]
    lora_bytes = (hf[3] if hf else 0) + sum(a.bytes for a in lora or ())
    return CacheScan(
        models=tuple(sorted(hf[0], key=lambda m: m.id)) if hf is not None else None,
        lora_adapters=tuple(sorted(adapters, key=lambda a: a.id)) if adapters is not None else None,
        model_bytes=hf[2] if hf else 0,
        lora_bytes=lora_bytes,
    )


# ---------------------------------------------------------------------- disk throughput


def largest_file(roots: Iterable[Path], limit: int = PROBE_MAX_FILES) -> Path | None:
    """The largest regular file under the roots (symlinks not followed), looking at ``limit`` files at most."""
    best: tuple[int, str] | None = None
    seen = 0
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
            for name in filenames:
                seen += 1
                if seen > limit:
                    return Path(best[1]) if best else None
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and (best is None or st.st_size > best[0]):
                    best = (st.st_size, path)
    return Path(best[1]) if best else None


def measure_read(path: Path, max_bytes: int, clock: Callable[[], float] = time.perf_counter) -> float | None:
    """Bytes per second of one sequential read of up to ``max_bytes`` of ``path``, page cache dropped first."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.warning("disk probe cannot open %s: %s", path, exc)
        return None
    try:
        if hasattr(os, "posix_fadvise"):
            # Only the range about to be read: length 0 would mean "to the end of the file".
            os.posix_fadvise(fd, 0, max_bytes, os.POSIX_FADV_DONTNEED)
        buffer = bytearray(PROBE_CHUNK)
        view = memoryview(buffer)
        done = 0
        start = clock()
        while done < max_bytes:
            got = os.readv(fd, [view[: min(PROBE_CHUNK, max_bytes - done)]])
            if got <= 0:
                break
            done += got
        elapsed = clock() - start
    except OSError as exc:
        log.warning("disk probe read of %s failed: %s", path, exc)
        return None
    finally:
        os.close(fd)
    if done < PROBE_MIN_BYTES or elapsed <= 0:
        return None
    return done / elapsed


class DiskProbe:
    """Rate-limited disk read throughput: measures at most once per ``interval`` seconds."""

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        interval: float = 3600.0,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roots = tuple(roots)
        self.interval = interval
        self.max_bytes = max_bytes
        self.clock = clock
        self.value: float | None = None
        self.measurements = 0
        self._last: float | None = None

    def sample(self) -> float | None:
        """The latest figure, measuring anew only when the interval has passed."""
        now = self.clock()
        if self.max_bytes <= 0 or (self._last is not None and now - self._last < self.interval):
            return self.value
        self._last = now
        path = largest_file(self.roots)
        if path is None:
            return self.value
        measured = measure_read(path, self.max_bytes)
        if measured is not None:
            self.value = measured
            self.measurements += 1
        return self.value
