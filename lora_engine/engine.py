"""The ``Engine``: one worker thread owns the pipeline; everyone else submits requests and waits.

What this is for: the queue and the worker. ``submit()`` checks capacity (``QueueFull`` at once), validates the
request (``InvalidRequest``), enqueues it in the :class:`~lora_engine.scheduler.SchedulerState` and returns a
``concurrent.futures.Future``. The worker thread pops the next request (grouped by adapter, bounded wait), asks
the :class:`~lora_engine.adapters.store.AdapterStore` for its adapter, swaps it into the weights
(``pipeline.backend.DiffusersBackend``), checks the base on every return to it, runs the pipeline and resolves the
future. As it pops a request it hands the adapters of the next few to the store's prefetch. It also keeps the
request metrics, the queue-time estimates, and runs control calls (digest checks) between requests.

What it is not for: the adapter tiers, in-flight de-duplication, remembered refusals or prefetching (the store), the
weights themselves (the backend), fetching (``adapters.fetch``). Nor torch: this module imports none; the backend
and the fetcher are handed in, which is what lets embedding applications pass a pipeline they built
(``Engine.from_pipeline``).

Where a request's adapter comes from (``GenerationResult.cache_tier``): ``"active"`` (in the weights already),
``"device"``, ``"ram"``, ``"disk"``, ``"hub"`` or ``"local"``; see ``adapters.store``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

from .adapter_cache import AdapterKey
from .adapters.store import AdapterStore, LoadedAdapter
from .backend_info import BackendInfo
from .config import EngineConfig
from .errors import EngineClosed, EngineError, InvalidAdapterId, QueueFull
from .metrics import EngineMetrics
from .request import (
    BASE_ADAPTER,
    GenerationRequest,
    GenerationResult,
    RequestLimits,
    Timings,
    check_adapter_id,
    validate_request,
)
from .scheduler import SchedulerState, Ticket
from .service import ProgressCallback

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineStatus", "RequestFuture"]

# How many upcoming adapters are fetched ahead, and by how many threads (downloads overlap; parsing is
# short and releases the GIL in torch).
_PREFETCH_DEPTH = 4
_PREFETCH_THREADS = 2


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot of the engine for the UI and health checks.

    Args:
        queue_depth (`int`): requests waiting (not counting the one running).
        active_adapter (`str`): the adapter in the weights, ``""`` for the base model.
        base_digest (`str`): the digest of the base weights at start.
        digest_ok (`bool`): every return to the base so far matched it.
        ram_cache (`dict`), device_cache (`dict`): tier stats.
        scheduler (`dict`): dispatch counters.
    """

    queue_depth: int
    active_adapter: str
    base_digest: str
    digest_ok: bool
    ram_cache: dict
    device_cache: dict
    scheduler: dict


class RequestFuture(Future):
    """The Future ``submit`` returns; ``ticket`` is its place in the queue (for ``Engine.position``)."""

    ticket: Ticket | None = None


@dataclass
class _Job:
    request: GenerationRequest
    future: RequestFuture
    enqueued_at: float
    on_progress: ProgressCallback | None
    ticket: Ticket | None = None


@dataclass(frozen=True)
class _Control:
    """A call to run on the worker thread between requests (a digest check), and the Future of its result."""

    call: Callable[[], object]
    result: Future


class Engine:
    """Serves generation requests from one warm SDXL pipeline, swapping LoRA adapters per request.

    Build it with :meth:`from_config` (loads ``MODEL_ID`` or the demo model) or :meth:`from_pipeline`. It implements
    :class:`~lora_engine.service.InlineImageService`.

    Example:
        >>> engine = Engine.from_config(EngineConfig.from_env())
        >>> result = engine.generate(GenerationRequest("a red circle", lora="demo/stripes", seed=1))
        >>> result.image.save("out.png"); print(result.timings)
    """

    info: BackendInfo
    limits: RequestLimits
    config: EngineConfig

    def __init__(self, backend, fetcher, config: EngineConfig, *, metrics: EngineMetrics | None = None):
        self.backend = backend
        self.fetcher = fetcher
        self.config = config
        self.info = backend.info
        self.metrics = metrics or EngineMetrics()
        self.limits = self.info.limits
        self._rng = random.SystemRandom()
        self._cond = threading.Condition()
        self._state: SchedulerState[_Job] = SchedulerState(
            max_queue=config.max_queue, max_wait_s=config.max_wait_s, group_by_adapter=config.group_by_adapter
        )
        self._closed = False
        # The adapter id in the weights; read by submit()/position()/the scheduler under _cond, written by the worker.
        self._loaded_adapter = BASE_ADAPTER
        self._store = AdapterStore(
            fetcher,
            parse=self._parse,
            prepare=backend.prepare,
            ram_cache_bytes=config.ram_cache_bytes,
            device_cache_bytes=config.device_cache_bytes,
            metrics=self.metrics,
            prefetch_threads=_PREFETCH_THREADS,
        )
        # Recent mean seconds per request (fetch + swap + inference), for estimate_s; None before the first.
        self._mean_run_s: float | None = None
        # Calls to run on the worker thread between requests (digest checks).
        self._control: list[_Control] = []
        self.base_digest = backend.base_digest
        self._digest_ok = True
        self.metrics.digest_ok.set(1)
        self.metrics.originals_bytes.set(backend.originals_bytes())
        self.metrics.model.info(
            {
                "model_id": self.info.model_id,
                "base_model_id": self.info.base_model_id,
                "device": self.info.device,
                "dtype": self.info.dtype,
                "base_digest": self.base_digest,
            }
        )
        self._inline_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="lora-engine-worker", daemon=True)
        self._worker.start()

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Load the pipeline ``config`` names (the demo model when ``MODEL_ID`` is unset on a CPU)."""
        from .pipeline.backend import DiffusersBackend

        return cls._with_backend(DiffusersBackend.from_config(config), config)

    @classmethod
    def from_pipeline(cls, pipeline, *, base_model_id: str, model_id: str | None = None, **options) -> Engine:
        """Serve a pipeline the caller built (benchmarks, embedding applications).

        Args:
            pipeline: a ``StableDiffusionXLPipeline`` on its device and dtype.
            base_model_id (`str`): the ``base_model`` LoRA cards must name.
            model_id (`str`, *optional*): a label for it; defaults to ``base_model_id``.
            options: any ``EngineConfig`` field (``max_queue=``, ``local_lora_dirs=``, ...).
        """
        from .pipeline.backend import BackendInfo, DiffusersBackend

        config = EngineConfig(base_model_id=base_model_id, **options)
        info = BackendInfo.describe(
            config,
            model_id=model_id or base_model_id,
            base_model_id=base_model_id,
            device=pipeline.device,
            dtype=pipeline.unet.dtype,
            is_demo=False,
        )
        backend = DiffusersBackend(
            pipeline,
            info,
            originals_device=config.originals_device,
            eager_originals=config.eager_originals,
            swap_kernel=config.swap_kernel,
        )
        return cls._with_backend(backend, config)

    @classmethod
    def _with_backend(cls, backend, config: EngineConfig) -> Engine:
        from .adapters.fetch import AdapterFetcher

        fetcher = AdapterFetcher(
            accepted_base_models=backend.info.accepted_base_models,
            local_dirs=tuple(Path(d) for d in backend.info.local_lora_dirs),
            cache_dir=config.hub_cache_dir,
            timeout_s=config.hub_timeout_s,
            max_bytes=config.max_adapter_bytes,
        )
        return cls(backend, fetcher, config)

    # -- the public surface ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, on_progress: ProgressCallback | None = None) -> Future:
        """Queue a request; returns a Future of :class:`GenerationResult` (a :class:`RequestFuture`).

        Checks, in order: the engine is open, the queue has room (``QueueFull`` at once), the request is
        valid (``InvalidRequest``/``InvalidAdapterId``). Cancelling the future before the request runs
        drops it from the queue.

        Raises:
            EngineClosed, QueueFull, InvalidRequest, InvalidAdapterId
        """
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if len(self._state) >= self.config.max_queue:
                self.metrics.refusals.labels(QueueFull.kind).inc()
                raise QueueFull(self.config.max_queue)
        try:
            resolved = validate_request(request, self.limits, self._rng)
        except EngineError as e:
            self.metrics.refusals.labels(e.kind).inc()
            raise
        job = _Job(resolved, RequestFuture(), time.monotonic(), on_progress)
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            job.ticket = job.future.ticket = self._state.push(resolved.lora, job, job.enqueued_at)
            self.metrics.queue_depth.set(len(self._state))
            self._cond.notify_all()
        job.future.add_done_callback(lambda f, job=job: self._on_done(job, f))
        return job.future

    def generate(self, request: GenerationRequest, timeout: float | None = None, **kwargs) -> GenerationResult:
        """``submit(request).result(timeout)``: blocks until the image is ready."""
        return self.submit(request, **kwargs).result(timeout)

    def generate_inline(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """Run one request on the calling thread and return the weights to the base model afterwards.

        For hosts where the GPU exists only inside a particular call, such as Hugging Face ZeroGPU, whose
        ``@spaces.GPU`` functions run in a separate process: whatever such a call changes in the weights does
        not survive it, so nothing here relies on an adapter still being in place from a previous call. The
        worker thread is not used (it stays idle); calls are serialised by a lock.

        Raises:
            InvalidRequest, InvalidAdapterId, AdapterError: as ``submit`` and the request would.
        """
        resolved = validate_request(request, self.limits, self._rng)
        job = _Job(resolved, RequestFuture(), time.monotonic(), on_progress)
        with self._inline_lock:
            try:
                return self._run(job)
            finally:
                self._swap_to(None, 0.0)

    def check_adapter(self, adapter_id: str) -> AdapterKey | None:
        """Check an adapter id against this base model without loading it (for the UI's "Any Hub LoRA").

        Returns:
            `AdapterKey`: the repo, the chosen weight file and the revision it resolved to; None for the base
            model (``""``).

        Raises:
            InvalidAdapterId, AdapterNotFound, AdapterGated, AdapterFetchError, IncompatibleAdapter,
            UnsafeAdapterFile
        """
        if check_adapter_id(adapter_id) == BASE_ADAPTER:
            return None
        return self.fetcher.resolve(adapter_id)

    def preload(self, adapter_id: str) -> AdapterKey:
        """Fetch and parse an adapter into the RAM tier now, on the calling thread; the weights are untouched.

        For hosts that decide which adapters a process holds, such as Ray Serve's multiplexed loader
        (``serving.cluster``): what they count as loaded is then what this engine holds. Waits for a fetch of the
        same adapter already in progress rather than fetching it twice.

        Returns:
            `AdapterKey`: the repo, file and revision now in the RAM tier.

        Raises:
            InvalidAdapterId (``""`` too: the base model has nothing to load), and the adapter's own refusal:
            AdapterNotFound, AdapterGated, AdapterFetchError, IncompatibleAdapter, UnsafeAdapterFile,
            UnsupportedAdapterFormat, CorruptAdapter
        """
        if check_adapter_id(adapter_id) == BASE_ADAPTER:
            raise InvalidAdapterId(adapter_id, "the base model is always loaded; there is nothing to preload")
        return self._store.preload(adapter_id)

    def evict(self, adapter_id: str) -> bool:
        """Drop every revision of an adapter from the RAM and device tiers; returns whether any was held.

        The other half of ``preload``: a host that unloads an adapter calls this, so the engine does not keep
        bytes for it. The adapter in the weights stays usable (the store holds its factors); a later request
        for it fetches it again, from the disk tier.
        """
        return self._store.evict(adapter_id)

    def resident_adapters(self) -> list[str]:
        """The adapter ids parsed in the RAM tier, least recently used first."""
        return self._store.resident_adapters()

    def position(self, future: Future) -> int | None:
        """How many requests run before this one (an estimate); None once it runs or is gone."""
        ticket = getattr(future, "ticket", None)
        if ticket is None:
            return None
        with self._cond:
            return self._state.position(ticket, self._loaded_adapter, time.monotonic())

    def estimate_s(self, future: Future) -> float | None:
        """Rough seconds until this request is done: (its position + 1) runs at the recent mean run time.

        None when not known: no request has finished yet, or this one is not waiting.
        """
        position = self.position(future)
        mean_run_s = self._mean_run_s
        if position is None or mean_run_s is None:
            return None
        return (position + 1) * mean_run_s

    def status(self) -> EngineStatus:
        with self._cond:
            depth = len(self._state)
            stats = self._state.stats
        store = self._store.stats()
        return EngineStatus(
            queue_depth=depth,
            active_adapter=self._loaded_adapter,
            base_digest=self.base_digest,
            digest_ok=self._digest_ok,
            ram_cache=asdict(store.ram),
            device_cache=asdict(store.device),
            scheduler={
                "dispatched": stats.dispatched,
                "dispatched_out_of_order": stats.dispatched_out_of_order,
                "max_overtaken_s": stats.max_overtaken_s,
            },
        )

    def metrics_text(self) -> bytes:
        """The engine's metrics in the Prometheus text format (for ``GET /metrics``)."""
        return self.metrics.render()

    def current_digest(self, timeout: float | None = None) -> str:
        """The digest of the weights as they are now, computed on the worker (for tests and health checks).

        It equals ``base_digest`` whenever no adapter is in the weights.
        """
        return self._call_on_worker(self.backend.digest, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking requests, fail the waiting ones with ``EngineClosed``, and stop the threads."""
        with self._cond:
            self._closed = True
            waiting = []
            while (d := self._state.pop(None, time.monotonic())) is not None:
                waiting.append(d.payload)
            self._cond.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(EngineClosed("the engine closed before this request ran"))
        self._worker.join(timeout)
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the worker -------------------------------------------------------------------------------------

    def _on_done(self, job: _Job, future: Future) -> None:
        if future.cancelled():
            with self._cond:
                if job.ticket is not None and self._state.cancel(job.ticket):
                    self.metrics.requests.labels("cancelled").inc()
                self.metrics.queue_depth.set(len(self._state))

    def _call_on_worker(self, fn: Callable[[], object], timeout: float | None):
        # A control call rides the same queue as requests, so it runs between requests on the worker thread.
        control = _Control(fn, Future())
        with self._cond:
            self._control.append(control)
            self._cond.notify_all()
        return control.result.result(timeout)

    def _next(self) -> _Job | _Control | None:
        with self._cond:
            while True:
                if self._control:
                    return self._control.pop(0)
                if self._closed:
                    return None
                dispatch = self._state.pop(self._loaded_adapter, time.monotonic())
                if dispatch is not None:
                    self.metrics.queue_depth.set(len(self._state))
                    self.metrics.max_overtaken.set(self._state.stats.max_overtaken_s)
                    if self.config.prefetch:
                        # Several upcoming adapters, not just the next: a cold fetch takes longer than
                        # one run, so fetching one ahead hides only a part of it.
                        upcoming = self._state.upcoming_adapters(
                            dispatch.ticket.adapter, time.monotonic(), _PREFETCH_DEPTH
                        )
                        for adapter in upcoming:
                            if adapter not in (dispatch.ticket.adapter, BASE_ADAPTER):
                                self._store.prefetch(adapter)
                    return dispatch.payload
                self._cond.wait()

    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            if isinstance(item, _Control):
                try:
                    item.result.set_result(item.call())
                except Exception as e:  # forwarded to the caller; this thread must survive
                    item.result.set_exception(e)
                continue
            job = item
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller left before it ran
            try:
                result = self._run(job)
            except EngineError as e:
                self.metrics.refusals.labels(e.kind).inc()
                self.metrics.requests.labels("refused").inc()
                job.future.set_exception(e)
            except Exception as e:  # a bug: logged with its traceback, forwarded, and the worker lives on
                logger.exception("request failed unexpectedly: %r", job.request)
                self.metrics.requests.labels("error").inc()
                job.future.set_exception(e)
            else:
                self.metrics.requests.labels("ok").inc()
                t = result.timings
                run_s = t.fetch_s + t.swap_s + t.inference_s
                # An exponential mean of recent runs, for queue-time estimates (recent load matters most).
                self._mean_run_s = run_s if self._mean_run_s is None else 0.8 * self._mean_run_s + 0.2 * run_s
                job.future.set_result(result)

    def _run(self, job: _Job) -> GenerationResult:
        req = job.request
        started = time.monotonic()
        queue_s = started - job.enqueued_at
        self.metrics.queue_wait.labels(self.metrics.adapter_label(req.lora)).observe(queue_s)

        loaded = None if req.lora == BASE_ADAPTER else self._store.get(req.lora)
        fetched = time.monotonic()
        swap_s = self._swap_to(loaded, req.lora_scale)
        swapped = time.monotonic()

        image = self.backend.generate(req, job.on_progress)
        done = time.monotonic()
        self.metrics.inference_seconds.observe(done - swapped)
        timings = Timings(queue_s=queue_s, fetch_s=fetched - started, swap_s=swap_s, inference_s=done - swapped)
        return GenerationResult(
            image=image,
            seed=req.seed,
            lora=req.lora,
            timings=timings,
            request=req,
            adapter_revision=None if loaded is None else loaded.key.revision,
            cache_tier=None if loaded is None else loaded.tier,
            weights_digest=self.base_digest,
        )

    def _swap_to(self, loaded: LoadedAdapter | None, scale: float) -> float:
        """Make the weights ``base + scale * loaded`` unless they are that already; returns the seconds it took."""
        active = self.backend.active()
        want = None if loaded is None or scale == 0.0 else (loaded.key.repo_id, scale)
        have = None if active is None else (active.adapter_id, active.scale)
        if want == have and (loaded is None or self._store.active_key == loaded.key):
            return 0.0
        t0 = time.monotonic()
        try:
            self.backend.swap(None if loaded is None else loaded.prepared, scale)
        finally:
            # Whatever happened, the weights are at the new adapter or (after a failure) at the exact base.
            active = self.backend.active()
            self._store.set_active(loaded if (loaded is not None and active is not None) else None)
            self._loaded_adapter = active.adapter_id if active is not None else BASE_ADAPTER
        if active is None and self.config.verify_restores:
            self._check_digest()
        # Counted as swap time (the check is part of returning to the base), not left out of every field.
        swap_s = time.monotonic() - t0
        self.metrics.swaps.inc()
        self.metrics.swap_seconds.observe(swap_s)
        self.metrics.originals_bytes.set(self.backend.originals_bytes())
        return swap_s

    def _check_digest(self) -> None:
        # Every kept original compared with its live layer: as strong as the full digest for the layers swaps
        # touch (nothing else is ever written), at the cost of one read instead of a reduction over all weights.
        self.metrics.digest_checks.inc()
        if not self.backend.verify_base():
            # Should be impossible (restores are copies); make it loud rather than serve a corrupted base.
            self._digest_ok = False
            self.metrics.digest_ok.set(0)
            logger.error("a restored layer differs from its original; the base weights are no longer exact")

    def _parse(self, adapter_id: str, path: Path):
        """The store's ``parse``: read and check one adapter file against this pipeline's layers."""
        from .adapters.parse import load_adapter_file, parse_lora_state_dict

        tensors, metadata = load_adapter_file(adapter_id, path, max_bytes=self.config.max_adapter_bytes)
        return parse_lora_state_dict(adapter_id, tensors, metadata, self.backend.index)
