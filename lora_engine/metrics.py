"""Prometheus metrics of one engine, in a registry of its own (so tests can build many engines).

What this is for: the numbers an operator watches (queue depth, waits, swaps, cache hits per tier, the
base digest check) and that ``GET /metrics`` renders. Not for logic: nothing reads these back.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

__all__ = ["EngineMetrics"]

# Adapter ids are user input; a label per id would grow without bound. The first this many get their own
# label value, the rest share "other".
_MAX_ADAPTER_LABELS = 64


class EngineMetrics:
    """The engine's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("lora_engine_requests", "Requests finished, by outcome.", ["outcome"], registry=r)
        self.queue_depth = Gauge("lora_engine_queue_depth", "Requests waiting.", registry=r)
        self.queue_wait = Histogram(
            "lora_engine_queue_wait_seconds",
            "Time waiting in the queue, by adapter.",
            ["adapter"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120),
        )
        # Not "wait beyond FIFO" itself: from a request's first overtake to its start, which also counts
        # older requests that FIFO would have run first. The scheduler's bound is on younger requests' work.
        self.max_overtaken = Gauge(
            "lora_engine_max_overtaken_seconds",
            "Longest time from a request's first overtake by a younger one to its start (an upper bound on its "
            "wait beyond FIFO; it includes older requests' runs).",
            registry=r,
        )
        self.swaps = Counter("lora_engine_swaps", "Adapter swaps written into the weights.", registry=r)
        self.swap_seconds = Histogram(
            "lora_engine_swap_seconds",
            "Time per swap.",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.fetch_seconds = Histogram("lora_engine_fetch_seconds", "Time resolving+downloading+parsing.", registry=r)
        self.inference_seconds = Histogram("lora_engine_inference_seconds", "Time in the pipeline.", registry=r)
        self.cache_lookups = Counter(
            "lora_engine_adapter_cache_lookups", "Where each adapter was found.", ["tier"], registry=r
        )
        self.cache_bytes = Gauge("lora_engine_adapter_cache_bytes", "Bytes held by a tier.", ["tier"], registry=r)
        self.evictions = Counter("lora_engine_adapter_cache_evictions", "Evictions per tier.", ["tier"], registry=r)
        self.prefetches = Counter("lora_engine_prefetches", "Prefetches started, by outcome.", ["outcome"], registry=r)
        self.refusals = Counter("lora_engine_refusals", "Typed refusals, by kind.", ["kind"], registry=r)
        self.digest_ok = Gauge(
            "lora_engine_base_digest_ok", "1 while the base weights' digest equals the startup digest.", registry=r
        )
        self.digest_checks = Counter("lora_engine_base_digest_checks", "Digest checks on return to base.", registry=r)
        self.originals_bytes = Gauge("lora_engine_originals_bytes", "Bytes of kept original weights.", registry=r)
        self.model = Info("lora_engine_model", "The loaded base model.", registry=r)
        self._adapter_labels: set[str] = set()

    def adapter_label(self, adapter_id: str) -> str:
        if adapter_id == "":
            return "base"
        if adapter_id in self._adapter_labels or len(self._adapter_labels) < _MAX_ADAPTER_LABELS:
            self._adapter_labels.add(adapter_id)
            return adapter_id
        return "other"

    def render(self) -> bytes:
        return generate_latest(self.registry)
