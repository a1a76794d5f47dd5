"""Image pull throughput per node, learned from kubelet's "Pulled" events.

kubelet records an Event with reason `Pulled` after each image pull. Its message has had three shapes:

    Successfully pulled image "nginx:1.25" in 3.2s (3.4s including waiting). Image size: 71234567 bytes.
    Successfully pulled image "nginx:1.25" in 3.2s (3.4s including waiting)       (no size: 1.25 to 1.28)
    Successfully pulled image "nginx:1.25" in 3.201234567s                          (older kubelets)

The first duration is the pull itself (the newer forms exclude the wait in kubelet's pull queue); it
is a Go duration ("1m2.5s", "500ms", "1h0m3s", "12µs"). A sample is image bytes / pull seconds; a
message without a size gives a sample only when the caller passes the image's size (for example from
the node's `status.images`). "Container image ... already present on machine" is also reason `Pulled`
and gives none. The node is the event's `source.host` (core/v1), `deprecatedSource.host`
(events.k8s.io/v1) or `reportingInstance`.

PullThroughput keeps, per node, an exponentially weighted mean of those samples:

    rate = alpha * sample + (1 - alpha) * rate        (the first sample sets the rate)

Images under `min_bytes` (default 10 MB) are ignored: their pull time is registry round trips, not
bandwidth. A sample is capped at `max_rate` (default 10 GB/s): a pull that found most layers on the
node reports the whole image's size for the few layers it fetched and would otherwise overstate the
node's bandwidth. A node without samples gets the prior (default 100 MB/s) from `get`.

Precedence for the snapshot's `pull_bw`: a learned rate overrides the rate measured in the node's
GPUNodeReport, which overrides the scoring plugin's prior; `apply(node)` writes the learned rate onto
a NodeState, and `learned(node)` tells a learned rate from the prior.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from scheduler.core.images import normalize_image
from scheduler.core.types import NodeState

MB = 1_000_000
DEFAULT_PRIOR = 100 * MB  # bytes per second
DEFAULT_ALPHA = 0.3
MIN_BYTES = 10 * MB
MAX_RATE = 10_000 * MB
SEEN_EVENTS = 4096  # (uid, count) pairs remembered, so a relist does not count an event twice

_PULLED = re.compile(
    r'^Successfully pulled image "(?P<image>(?:[^"\\]|\\.)*)" in (?P<pull>[0-9.]+[a-zµμ]+(?:[0-9.]+[a-zµμ]+)*)'
    r"(?: \((?P<total>[0-9.]+[a-zµμ]+(?:[0-9.]+[a-zµμ]+)*) including waiting\))?"
    r"(?:\. Image size: (?P<size>[0-9]+) bytes)?\.?\s*$"
)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration string ("1m2.5s", "500ms", "0s"); None when it is not one."""
    text = text.strip()
    if not text:
        return None
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def event_node(event: Mapping[str, Any]) -> str:
    """The node that emitted an event (kubelet events name it as their source host)."""
    for key in ("source", "deprecatedSource"):
        source = event.get(key)
        if isinstance(source, Mapping) and source.get("host"):
            return str(source["host"])
    return str(event.get("reportingInstance") or "")


def parse_pulled_event(
    event: Mapping[str, Any], sizes: Mapping[str, int] | None = None
) -> tuple[str, int, float] | None:
    """(node, image bytes, pull seconds) from a kubelet Pulled event, or None when it gives no sample.

    `sizes` (normalised image reference -> bytes) supplies the size for messages that do not state it.
    """
    if not isinstance(event, Mapping) or event.get("reason") != "Pulled":
        return None
    message = event.get("message") or event.get("note") or ""
    match = _PULLED.match(str(message).strip())
    if match is None:
        return None
    node = event_node(event)
    seconds = parse_go_duration(match.group("pull"))
    if not node or seconds is None or seconds <= 0:
        return None
    if match.group("size") is not None:
        size = int(match.group("size"))
    else:
        image = match.group("image").replace('\\"', '"')
        size = int((sizes or {}).get(normalize_image(image), 0))
    if size <= 0:
        return None
    return node, size, seconds


def _event_key(event: Mapping[str, Any]) -> tuple[str, int] | None:
    meta = event.get("metadata") or {}
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    if not uid:
        return None
    series = event.get("series")
    count = series.get("count") if isinstance(series, Mapping) else None
    return str(uid), int(count or event.get("count") or 1)


class PullThroughput:
    """Per-node pull throughput in bytes per second; safe to feed and read from several threads."""

    def __init__(
        self,
        prior: float = DEFAULT_PRIOR,
        alpha: float = DEFAULT_ALPHA,
        min_bytes: int = MIN_BYTES,
        max_rate: float = MAX_RATE,
    ) -> None:
        if prior <= 0 or not 0 < alpha <= 1 or min_bytes < 0 or max_rate <= 0:
            raise ValueError("prior and max_rate must be positive, alpha in (0, 1], min_bytes not negative")
        self.prior = float(prior)
        self.alpha = float(alpha)
        self.min_bytes = int(min_bytes)
        self.max_rate = float(max_rate)
        self._rates: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, node: str, size: int, seconds: float) -> bool:
        """Fold one pull into the node's rate; False when the pull is too small or malformed to count."""
        if not node or size < self.min_bytes or size <= 0 or seconds <= 0:
            return False
        sample = min(size / seconds, self.max_rate)
        with self._lock:
            old = self._rates.get(node)
            self._rates[node] = sample if old is None else self.alpha * sample + (1 - self.alpha) * old
            self._samples[node] = self._samples.get(node, 0) + 1
        return True

    def observe_event(self, event: Mapping[str, Any], sizes: Mapping[str, int] | None = None) -> bool:
        """Parse and fold a kubelet event; an event already counted (same uid and count) is skipped."""
        parsed = parse_pulled_event(event, sizes)
        if parsed is None:
            return False
        key = _event_key(event)
        if key is not None:
            with self._lock:
                if key in self._seen:
                    return False
                self._seen[key] = None
                while len(self._seen) > SEEN_EVENTS:
                    self._seen.popitem(last=False)
        return self.observe(*parsed)

    def learned(self, node: str) -> float | None:
        with self._lock:
            return self._rates.get(node)

    def get(self, node: str) -> float:
        """The learned rate, or the prior for a node without history."""
        rate = self.learned(node)
        return self.prior if rate is None else rate

    def samples(self, node: str) -> int:
        with self._lock:
            return self._samples.get(node, 0)

    def forget(self, node: str) -> None:
        """Drop a node's history (the node was deleted)."""
        with self._lock:
            self._rates.pop(node, None)
            self._samples.pop(node, None)

    def as_dict(self) -> dict[str, float]:
        """Learned rates only (nodes on the prior are absent)."""
        with self._lock:
            return dict(self._rates)

    def apply(self, node: NodeState) -> NodeState:
        """The node with its learned rate as `pull_bytes_per_s` (it overrides the report's); unchanged without."""
        rate = self.learned(node.name)
        return node if rate is None else replace(node, pull_bytes_per_s=rate)
