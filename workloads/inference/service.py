"""The model server's state and operations, apart from HTTP: load, generate, hot-load adapters.

FastAPI (`workloads.inference.server`) is a thin adapter over this class, and the GPU check calls
the same `load` path without any web stack. One lock serialises generation and adapter changes:
an adapter is read from disk outside the lock, then swapped in between two requests.

Adapters come from the node's hub cache (`org/name@revision`) or from a folder below the adapter
root (`adapter_root`, absolute or relative to it); a folder outside the root (`/etc`, `..`, a
link that leads out) is refused, as is anything malformed, with an AdapterError that names it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workloads.gpt import greedy_generate
from workloads.inference.cache import ModelRef, resolve_snapshot
from workloads.inference.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from workloads.inference.lora import (
    AdapterError,
    LoRAAdapter,
    active_adapter,
    detach,
    install,
    plan_attach,
    read_adapter,
)
from workloads.inference.metrics import InferenceMetrics

log = logging.getLogger("gpusched.inference")


class NotReady(RuntimeError):
    """Weights are not loaded (yet, or the load failed)."""


class UnknownAdapter(KeyError):
    pass


@dataclass(frozen=True)
class ServerSettings:
    model: ModelRef
    hf_cache: Path
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 256
    adapters: tuple[tuple[str, str], ...] = field(default=())  # (name, folder or org/name@rev) loaded at start
    adapter_root: Path = Path("/adapters")  # adapter folders must lie below it


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    rank: int
    alpha: float
    scale: float
    modules: tuple[str, ...]
    bytes: int
    source: str
    load_seconds: float


class InferenceService:
    def __init__(self, settings: ServerSettings, metrics: InferenceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else InferenceMetrics()
        self.loaded: LoadedModel | None = None
        self.error: str | None = None
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def load(self) -> LoadedModel:
        """Resolve the model in the cache, load it, then the start-up adapters; records the load time."""
        ref = self.settings.model
        try:
            snapshot = resolve_snapshot(ref, self.settings.hf_cache)
            loaded = load_model(snapshot, resolve_device(self.settings.device), resolve_dtype(self.settings.dtype))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.metrics.weights_load_seconds.labels(str(ref)).set(loaded.stats.seconds)
        self.metrics.weights_bytes.labels(str(ref)).set(loaded.stats.bytes)
        log.info(
            "loaded %s: %d bytes in %.3f s (%.2f GB/s) on %s",
            ref,
            loaded.stats.bytes,
            loaded.stats.seconds,
            loaded.stats.gbytes_per_second,
            loaded.stats.device,
        )
        self.loaded = loaded
        try:
            for name, source in self.settings.adapters:
                self.add_adapter(name, source)
        except Exception as exc:
            self.loaded = None  # a pod asked for adapters it cannot serve: stay unready, say why
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.error = None
        self.metrics.ready.set(1)
        return loaded

    @property
    def failed(self) -> bool:
        """The weights (or the start-up adapters) failed to load: the process cannot serve."""
        return self.loaded is None and self.error is not None

    def load_in_background(self, on_failure: Callable[[], None] | None = None) -> threading.Thread:
        """Start `load` on a thread so /healthz answers while the weights stream in; `on_failure`
        is called when it fails (the server exits, so the kubelet restarts the container)."""

        def run() -> None:
            try:
                self.load()
            except Exception:
                log.exception("loading %s failed", self.settings.model)
                if on_failure is not None:
                    on_failure()

        thread = threading.Thread(target=run, name="weights-load", daemon=True)
        thread.start()
        return thread

    def _require(self) -> LoadedModel:
        if self.loaded is None:
            raise NotReady(self.error or "weights are still loading")
        return self.loaded

    def generate(self, token_ids: list[int], max_new_tokens: int, adapter: str | None = None) -> list[int]:
        loaded = self._require()
        vocab = loaded.config.vocab_size
        if not token_ids:
            raise ValueError("token_ids is empty")
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if not 1 <= max_new_tokens <= self.settings.max_new_tokens:
            raise ValueError(f"max_new_tokens must be from 1 to {self.settings.max_new_tokens}")
        if adapter is not None and adapter not in self._adapters:
            raise UnknownAdapter(adapter)
        with self._lock, active_adapter(adapter):
            out = greedy_generate(loaded.model, token_ids, max_new_tokens)
        self.metrics.generated_tokens.inc(len(out))
        return out

    def _adapter_folder(self, source: str) -> Path:
        """`org/name@rev` resolved in the same offline cache as the model; else a folder below the
        adapter root (absolute, or relative to the root), links resolved."""
        if "@" in source and not source.startswith("/"):
            try:
                ref = ModelRef.parse(source)
            except ValueError:
                raise AdapterError(f"adapter source {source!r} is not org/name@revision") from None
            try:
                return resolve_snapshot(ref, self.settings.hf_cache)
            except LookupError as exc:
                raise AdapterError(str(exc)) from None
        if ".." in Path(source).parts:
            raise AdapterError(f"adapter source {source!r} may not contain '..'")
        root = self.settings.adapter_root.resolve()
        folder = (root / source).resolve()
        if not folder.is_relative_to(root):
            raise AdapterError(f"adapter source {source!r} is outside the adapter root {root}")
        return folder

    def add_adapter(self, name: str, source: str) -> AdapterInfo:
        """Hot-load (or replace) adapter `name`; the model is unchanged if anything about it is wrong."""
        loaded = self._require()
        start = time.perf_counter()
        try:
            adapter: LoRAAdapter = read_adapter(self._adapter_folder(source), name)
            with self._lock:
                plan = plan_attach(loaded.model, adapter)
                detach(loaded.model, name)
                install(loaded.model, name, adapter.scale, plan)
        except AdapterError:
            self.metrics.adapter_loads.labels("error").inc()
            raise
        info = AdapterInfo(
            name=name,
            rank=adapter.rank,
            alpha=adapter.alpha,
            scale=adapter.scale,
            modules=adapter.modules,
            bytes=adapter.nbytes,
            source=adapter.source,
            load_seconds=time.perf_counter() - start,
        )
        self._adapters[name] = info
        self.metrics.adapter_loads.labels("ok").inc()
        self.metrics.adapters_loaded.set(len(self._adapters))
        log.info("adapter %s loaded from %s (%d modules)", name, adapter.source, len(adapter.modules))
        return info

    def adapters(self) -> list[AdapterInfo]:
        return [self._adapters[k] for k in sorted(self._adapters)]
