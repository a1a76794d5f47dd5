"""Every metric the inference server exports, defined once, on a registry of its own.

The weights-load time is the figure that gpusched's cold-start prediction is about; the request
counters carry only bounded labels (a fixed endpoint set and the status code).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ENDPOINTS = ("/generate", "/adapters", "/healthz", "/readyz", "/metrics")


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.weights_load_seconds = Gauge(
            "gpusched_inference_weights_load_seconds",
            "Seconds the last load of the model's weights took, from the node's cache to the device.",
            ["model"],
            registry=r,
        )
        self.weights_bytes = Gauge(
            "gpusched_inference_weights_bytes", "Bytes of safetensors weights loaded.", ["model"], registry=r
        )
        self.ready = Gauge(
            "gpusched_inference_ready", "1 once the weights are loaded and requests are served.", registry=r
        )
        self.requests = Counter(
            "gpusched_inference_requests_total",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gpusched_inference_request_duration_seconds",
            "HTTP request latency by endpoint.",
            ["endpoint"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
            registry=r,
        )
        self.generated_tokens = Counter(
            "gpusched_inference_generated_tokens_total", "Tokens produced by /generate.", registry=r
        )
        self.adapter_loads = Counter(
            "gpusched_inference_adapter_loads_total",
            "LoRA adapter loads by result (ok or error).",
            ["result"],
            registry=r,
        )
        self.adapters_loaded = Gauge(
            "gpusched_inference_adapters_loaded", "LoRA adapters currently loaded.", registry=r
        )
        self.ready.set(0)
        for result in ("ok", "error"):
            self.adapter_loads.labels(result)


def endpoint_label(path: str) -> str:
    """Collapse request paths into the fixed endpoint set, so stray URLs cannot grow the series."""
    return path if path in ENDPOINTS else "other"
