"""Trace-replay benchmark: a Zipf/Poisson workload over many Hub adapters, four ways of serving it; one JSON.

For: the serving targets (``targets`` below), on the offline demo model, in ONE run so every ratio compares numbers
taken on the same machine under the same load. A seeded trace (Poisson arrivals, Zipf(s) popularity over N adapters,
a share of base-model requests) is replayed at each load (a fraction of measured capacity) against:

* ``a_reference``: the reference method, FIFO, one worker: per request ``hf_hub_download`` (its own cache,
  cold at start; a cached file is found with ``try_to_load_from_cache``, so no Hub call per request) then
  ``load_lora_weights`` + ``fuse_lora`` ... generate ... ``unfuse_lora`` + ``unload_lora_weights``;
* ``b_engine_fifo``: this engine, ``group_by_adapter=False, prefetch=False``;
* ``c_engine_grouped``: this engine, ``group_by_adapter=True, prefetch=True, max_wait_s`` = a few service times;
* ``c_engine_grouped_warm``: the same with every adapter fetched and parsed before the trace starts;
* ``d_cold_boot``: a pipeline loaded per request (``from_pretrained`` + ``load_lora_weights`` + generate), on
  the first ``--cold-requests`` requests of the trace only (it is slow), for scale.

Adapters are N distinct repos on a loopback fake Hub (the demo LoRA files' tensors, each copy with its own
safetensors metadata entry, so every repo's bytes differ), downloaded with ``--download-delay-s`` on every
``/resolve/`` call (a cold fetch makes two: HEAD then GET). Each mode gets a fresh pipeline and a fresh, cold
adapter cache. Capacity is the median wall time of a warm request (adapter already in the weights).

Not for: absolute speed (the demo model is tiny and the machine may be shared: read ratios), or GPU numbers.

Usage: ``python bench/trace.py [--quick] [--requests 300] [--loads 0.8,1.2] [--adapters 50]
[--download-delay-s 0.3] [--steps 4] [--seed 0] [--cold-requests 30] [--out bench/out/trace.json]``.
The JSON goes to stdout and ``--out``; the latency CDFs to ``trace_cdf.png`` beside it; progress to stderr.
See ``bench/README.md`` ("Trace replay") for what each number means.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

# Stdlib + yaml only: importing it does not import huggingface_hub, so HF_ENDPOINT can still be set after.
from bench._out import emit
from lora_engine.testing.loopback_hub import FakeHub, start_for_this_process, write_repo

#: ``base_model`` on the published cards; the engine is built to accept it (as tests/lora_engine do).
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
REPO_OWNER = "trace-bench"
PROMPT = "a red circle on a blue background"
SIDE = 64

MODES = ("a_reference", "b_engine_fifo", "c_engine_grouped", "c_engine_grouped_warm", "d_cold_boot")
GROUPED_MODES = ("c_engine_grouped", "c_engine_grouped_warm")
#: Slack allowed in the wait-bound check: start times are taken in ``Engine._run``, a little after the
#: scheduler's decision (a lock, a GIL switch), so the measured runs are off by up to a few milliseconds.
BOUND_TOLERANCE_S = 0.05


def _log(msg: str) -> None:
    print(f"[trace {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


# ----------------------------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class TraceItem:
    idx: int
    #: Arrival in units of the mean inter-arrival time at load 1 (i.e. of the service time).
    at_unit: float
    #: ``""``: the base model.
    lora: str


def make_trace(
    n: int, adapters: list[str], *, seed: int, zipf_s: float = 1.1, base_fraction: float = 0.1, kind: str = "zipf"
) -> list[TraceItem]:
    """``n`` requests: Poisson arrivals at rate 1 and adapters by Zipf rank (``kind="zipf"``), or adapters in
    turn a0 a1 ... a0 a1 ... (``kind="round_robin"``, no base requests: a trace that alternates adapters)."""
    rng = random.Random(seed)
    weights = [1.0 / (k**zipf_s) for k in range(1, len(adapters) + 1)]
    items, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1.0)
        if kind == "round_robin":
            lora = adapters[i % len(adapters)]
        elif kind == "zipf":
            lora = "" if rng.random() < base_fraction else rng.choices(adapters, weights)[0]
        else:
            raise ValueError(f"unknown trace kind {kind!r}")
        items.append(TraceItem(i, t, lora))
    return items


# ----------------------------------------------------------------------------------------------- the Hub


@dataclass(frozen=True)
class Published:
    repo_id: str
    weight_name: str
    nbytes: int


def publish_adapters(hub_root: Path, assets, n: int) -> list[Published]:
    """``n`` repos ``trace-bench/lora-XX`` on the fake Hub: the demo LoRAs' tensors in turn, each file with its
    own ``bench_trace_copy`` metadata entry so all ``n`` files differ (and the disk cache really holds ``n``)."""
    from safetensors import safe_open
    from safetensors.torch import save

    from lora_engine.demo.model import DEMO_LORAS

    sources = []
    for spec in DEMO_LORAS:
        path = assets.lora_dir(spec.repo_id) / spec.weight_name
        with safe_open(str(path), "pt") as f:
            sources.append(({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), spec.key_format))
    out = []
    for i in range(n):
        tensors, meta, key_format = sources[i % len(sources)]
        data = save(tensors, metadata={**meta, "bench_trace_copy": f"{i:04d}"})
        repo_id, weight = f"{REPO_OWNER}/lora-{i:02d}", f"trace-lora-{i:02d}-{key_format}.safetensors"
        card = {
            "license": "apache-2.0",
            "tags": ["text-to-image", "stable-diffusion-xl", "lora", "diffusers"],
            "base_model": SDXL_BASE,
            "instance_prompt": f"style {i}",
        }
        write_repo(hub_root, repo_id, files={weight: data}, card=card, card_body=f"\n# Trace bench LoRA {i}\n")
        out.append(Published(repo_id, weight, len(data)))
    return out


# ----------------------------------------------------------------------------------------------- servers


def load_pipeline(model_dir: Path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class RefTimings:
    queue_s: float
    fetch_s: float
    swap_s: float
    inference_s: float
    boot_s: float = 0.0


@dataclass
class RefResult:
    timings: RefTimings
    cache_tier: str | None


class ReferenceServer:
    """The reference method as a tiny server: one worker thread, a ``queue.Queue``, FIFO.

    Per request with a LoRA: ``hf_hub_download`` (skipped when ``try_to_load_from_cache`` finds the file, so a
    warm adapter costs no Hub round trip: generous to the reference), ``load_lora_weights`` + ``fuse_lora``,
    generate, ``unfuse_lora`` + ``unload_lora_weights``. With ``cold_boot=True`` the pipeline is loaded with
    ``from_pretrained`` for every request instead (and the LoRA is loaded unfused: the pipeline is thrown away).
    """

    def __init__(self, model_dir: Path, cache_dir: Path, weight_names: dict[str, str], *, cold_boot: bool = False):
        self.model_dir = model_dir
        self.cache_dir = str(cache_dir)
        self.weight_names = weight_names
        self.cold_boot = cold_boot
        self.pipe = None if cold_boot else load_pipeline(model_dir)
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="reference-worker", daemon=True)
        self._thread.start()

    def submit(self, request) -> Future:
        fut: Future = Future()
        self._q.put((request, fut, time.monotonic()))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(60)
        self.pipe = None

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            request, fut, enqueued = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._run(request, enqueued))
            except Exception as e:  # forwarded to the replay driver, which counts it as failed
                fut.set_exception(e)

    def _fetch(self, repo_id: str) -> tuple[str, str]:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        weight = self.weight_names[repo_id]
        cached = try_to_load_from_cache(repo_id, weight, cache_dir=self.cache_dir)
        if isinstance(cached, str):
            return cached, "disk"
        return hf_hub_download(repo_id, weight, cache_dir=self.cache_dir), "hub"

    def _run(self, req, enqueued: float) -> RefResult:
        import torch

        started = time.monotonic()
        boot_s = 0.0
        pipe = self.pipe
        if self.cold_boot:
            pipe = load_pipeline(self.model_dir)
            boot_s = time.monotonic() - started
        t0 = time.monotonic()
        path, tier = self._fetch(req.lora) if req.lora else (None, None)
        t1 = time.monotonic()
        if path is not None:
            pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name="ref")
            if not self.cold_boot:
                pipe.fuse_lora(lora_scale=req.lora_scale)
        t2 = time.monotonic()
        with torch.inference_mode():
            pipe(
                prompt=req.prompt,
                negative_prompt=None,
                num_inference_steps=req.num_inference_steps,
                guidance_scale=req.guidance_scale,
                width=req.width,
                height=req.height,
                generator=torch.Generator(device="cpu").manual_seed(req.seed),
                output_type="pil",
            )
        t3 = time.monotonic()
        if path is not None and not self.cold_boot:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
        t4 = time.monotonic()
        return RefResult(RefTimings(started - enqueued, t1 - t0, (t2 - t1) + (t4 - t3), t3 - t2, boot_s), tier)


def build_engine(model_dir: Path, cache_dir: Path, *, grouped: bool, max_wait_s: float, max_queue: int, steps: int):
    from lora_engine import Engine

    return Engine.from_pipeline(
        load_pipeline(model_dir),
        base_model_id=SDXL_BASE,
        hub_cache_dir=str(cache_dir),
        max_queue=max_queue,
        max_wait_s=max_wait_s,
        group_by_adapter=grouped,
        prefetch=grouped,
        default_steps=steps,
        default_side=SIDE,
        hub_timeout_s=60.0,
    )


def _swaps(engine) -> float:
    return engine.metrics.registry.get_sample_value("lora_engine_swaps_total") or 0.0


# ----------------------------------------------------------------------------------------------- replay


@dataclass
class Record:
    idx: int
    lora: str
    arrival: float = math.nan  # monotonic, when submitted
    start: float = math.nan  # arrival + queue_s
    finish: float = math.nan  # the future's done callback
    fetch_s: float = 0.0
    swap_s: float = 0.0
    inference_s: float = 0.0
    boot_s: float = 0.0
    tier: str | None = None
    error: str | None = None
    callbacks: int = 0


def replay(submit, items: list[tuple[TraceItem, float]], make_request, timeout_s: float) -> list[Record]:
    """Submit each request at its arrival time (seconds from now) from this thread; wait for them all."""
    records = [Record(item.idx, item.lora) for item, _ in items]
    lock = threading.Lock()

    def done(fut: Future, rec: Record) -> None:
        finished = time.monotonic()
        with lock:
            rec.callbacks += 1
            rec.finish = finished
            if fut.exception() is not None:
                rec.error = f"{type(fut.exception()).__name__}: {fut.exception()}"
                return
            res = fut.result()
            t = res.timings
            rec.start = rec.arrival + t.queue_s
            rec.fetch_s, rec.swap_s, rec.inference_s = t.fetch_s, t.swap_s, t.inference_s
            rec.boot_s = getattr(t, "boot_s", 0.0)
            rec.tier = res.cache_tier

    futures = []
    t0 = time.monotonic() + 0.05
    for (item, at_s), rec in zip(items, records):
        delay = t0 + at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        rec.arrival = time.monotonic()
        try:
            fut = submit(make_request(item))
        except Exception as e:  # QueueFull and the like: counted as not completed
            rec.error = f"{type(e).__name__}: {e}"
            continue
        fut.add_done_callback(lambda f, rec=rec: done(f, rec))
        futures.append(fut)
    _, pending = wait(futures, timeout=timeout_s)
    if pending:
        _log(f"{len(pending)} requests still pending after {timeout_s:.0f}s")
    return records


# ----------------------------------------------------------------------------------------------- analysis


def _pct(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def run_lengths(records: list[Record]) -> dict[int, float]:
    """Each run from its start to the next decision: to the next start while work was waiting, else to its
    own finish (the scheduler's "decision to next decision", so gaps between runs are charged to the runs)."""
    ok = sorted((r for r in records if r.error is None and not math.isnan(r.start)), key=lambda r: r.start)
    out = {}
    for cur, nxt in zip(ok, ok[1:] + [None]):
        if nxt is not None and nxt.arrival <= cur.finish:
            out[cur.idx] = nxt.start - cur.start
        else:
            out[cur.idx] = cur.finish - cur.start
    return out


def fifo_check(records: list[Record]) -> dict:
    """Replay the recorded run lengths through plain FIFO (same arrivals, work-conserving worker) and compare
    each request's start with its FIFO start; also the worker time spent on younger requests before each one."""
    runs = run_lengths(records)
    ok = sorted((r for r in records if r.idx in runs), key=lambda r: r.idx)  # idx order is arrival order
    free, beyond = -math.inf, {}
    for r in ok:
        fifo_start = max(r.arrival, free)
        free = fifo_start + runs[r.idx]
        beyond[r.idx] = r.start - fifo_start
    younger = {}
    by_start = sorted(ok, key=lambda r: r.start)
    for r in ok:
        younger[r.idx] = sum(runs[o.idx] for o in by_start if o.start < r.start and o.idx > r.idx)
    return {
        "runs": runs,
        "beyond": beyond,
        "younger": younger,
        "longest_run_s": max(runs.values(), default=0.0),
        "max_beyond_fifo_s": max(beyond.values(), default=0.0),
        "max_younger_work_s": max(younger.values(), default=0.0),
    }


def summarize(
    records: list[Record],
    *,
    swaps: float,
    swaps_source: str,
    wall_s: float,
    max_wait_s: float | None,
    scheduler: dict | None,
    grouped: bool,
) -> tuple[dict, list[float]]:
    n = len(records)
    ok = [r for r in records if r.error is None and not math.isnan(r.finish)]
    failed = [r for r in records if r.error is not None]
    lat = sorted(r.finish - r.arrival for r in ok)
    makespan = (max(r.finish for r in ok) - min(r.arrival for r in records)) if ok else math.nan
    busy = sum(r.finish - r.start for r in ok)
    sums = {k: sum(getattr(r, k) for r in ok) for k in ("fetch_s", "swap_s", "inference_s", "boot_s")}
    check = fifo_check(records)
    out = {
        "requests": n,
        "completed": len(ok),
        "completed_unique": len({r.idx for r in ok}),
        "completed_more_than_once": sum(1 for r in records if r.callbacks > 1),
        "failed": len(failed),
        "errors": sorted({r.error for r in failed})[:5],
        "latency_s": {
            "mean": _r(statistics.fmean(lat)) if lat else None,
            "p50": _r(_pct(lat, 0.50)),
            "p95": _r(_pct(lat, 0.95)),
            "p99": _r(_pct(lat, 0.99)),
            "max": _r(lat[-1]) if lat else None,
        },
        "makespan_s": _r(makespan, 3),
        "throughput_rps": _r(len(ok) / makespan if ok and makespan > 0 else math.nan),
        "swaps": int(swaps),
        "swaps_source": swaps_source,
        "swaps_per_request": _r(swaps / n if n else math.nan),
        "busy_s": _r(busy, 3),
        "swap_share": _r(sums["swap_s"] / busy if busy else math.nan),
        "fetch_share": _r(sums["fetch_s"] / busy if busy else math.nan),
        "inference_share": _r(sums["inference_s"] / busy if busy else math.nan),
        "other_share": _r((busy - sum(sums.values())) / busy if busy else math.nan),
        "mean_run_s": _r(busy / len(ok) if ok else math.nan),
        "cache_tiers": dict(Counter(r.tier or "base" for r in ok)),
        "wait_beyond_fifo_s": {
            "scheduler_max_overtaken_s": _r(scheduler["max_overtaken_s"]) if scheduler else None,
            "fifo_replay_max_s": _r(check["max_beyond_fifo_s"]),
            "younger_work_max_s": _r(check["max_younger_work_s"]),
        },
        "wall_s": _r(wall_s, 2),
    }
    if sums["boot_s"]:
        out["boot_share"] = _r(sums["boot_s"] / busy)
    if scheduler is not None:
        out["scheduler"] = scheduler
    if grouped and max_wait_s is not None:
        bound = max_wait_s + check["longest_run_s"]
        worst = max(check["max_beyond_fifo_s"], check["max_younger_work_s"])
        out["wait_bound"] = {
            "rule": "G2: per request, worker time on younger requests before it, and its start minus its start "
            "in a FIFO replay of the same run lengths, are each <= max_wait_s + longest run",
            "max_wait_s": _r(max_wait_s),
            "longest_run_s": _r(check["longest_run_s"]),
            "bound_s": _r(bound),
            "max_younger_work_s": _r(check["max_younger_work_s"]),
            "max_beyond_fifo_s": _r(check["max_beyond_fifo_s"]),
            "tolerance_s": BOUND_TOLERANCE_S,
            "violations": sum(
                1 for i in check["runs"] if max(check["beyond"][i], check["younger"][i]) > bound + BOUND_TOLERANCE_S
            ),
            "slack_s": _r(bound - worst),
            "pass": bool(ok) and worst <= bound + BOUND_TOLERANCE_S,
        }
    return out, [x for x in lat]


# ----------------------------------------------------------------------------------------------- the run


def _request(item: TraceItem, steps: int, guidance: float):
    from lora_engine import GenerationRequest

    return GenerationRequest(
        PROMPT,
        lora=item.lora,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=SIDE,
        height=SIDE,
        seed=item.idx,
    )


def measure_service_time(
    model_dir: Path, cache_dir: Path, adapter: str, *, steps: int, guidance: float, warmup: int, n: int
) -> dict:
    """Wall time of a warm request: the adapter already in the weights, nothing else waiting."""
    engine = build_engine(model_dir, cache_dir, grouped=False, max_wait_s=0.0, max_queue=4, steps=steps)
    try:
        item = TraceItem(0, 0.0, adapter)
        for _ in range(warmup):
            engine.generate(_request(item, steps, guidance))
        times = []
        for i in range(n):
            t = time.monotonic()
            engine.generate(_request(TraceItem(i, 0.0, adapter), steps, guidance))
            times.append(time.monotonic() - t)
    finally:
        engine.close()
    return {
        "service_time_s": _r(statistics.median(times)),
        "mean_s": _r(statistics.fmean(times)),
        "min_s": _r(min(times)),
        "max_s": _r(max(times)),
        "samples": n,
        "how": f"median wall time of {n} requests for {adapter} with it already in the weights "
        f"({warmup} warm-up requests first); median rather than mean because the machine may be shared",
    }


def _run_mode(
    mode: str,
    items: list[tuple[TraceItem, float]],
    *,
    hub: FakeHub,
    model_dir: Path,
    work: Path,
    tag: str,
    weight_names: dict[str, str],
    adapters: list[str],
    steps: int,
    guidance: float,
    max_wait_s: float,
    timeout_s: float,
) -> tuple[dict, list[float]]:
    cache = work / f"cache-{mode}-{tag}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    make = lambda item: _request(item, steps, guidance)  # noqa: E731
    if mode in ("a_reference", "d_cold_boot"):
        server = ReferenceServer(model_dir, cache, weight_names, cold_boot=mode == "d_cold_boot")
        try:
            t_start = time.monotonic()
            records = replay(server.submit, items, make, timeout_s)
        finally:
            server.close()
        swaps = sum(1 for r in records if r.lora and r.error is None)
        summary, lat = summarize(
            records,
            swaps=swaps,
            swaps_source="requests with a LoRA (load+fuse ... unfuse+unload)"
            if mode == "a_reference"
            else "requests with a LoRA (load, unfused)",
            wall_s=time.monotonic() - t_start,
            max_wait_s=None,
            scheduler=None,
            grouped=False,
        )
        return summary, lat
    grouped = mode in GROUPED_MODES
    engine = build_engine(
        model_dir, cache, grouped=grouped, max_wait_s=max_wait_s, max_queue=len(items) + 8, steps=steps
    )
    try:
        warm = {}
        if mode == "c_engine_grouped_warm":
            t = time.monotonic()
            delay = hub.delay_s
            hub.delay_s = 0.0  # the warm-up is not measured: no need to wait for the fake download delay
            try:
                for a in adapters:  # fetch + parse + swap each once, then back to the base, as a fresh engine is
                    engine.generate(_request(TraceItem(0, 0.0, a), 1, guidance))
                engine.generate(_request(TraceItem(0, 0.0, ""), 1, guidance))
            finally:
                hub.delay_s = delay
            warm = {
                "adapters_warmed": len(adapters),
                "warmup_s": _r(time.monotonic() - t, 2),
                "ram_cache_entries": engine.status().ram_cache.get("entries"),
            }
        before = _swaps(engine)
        base_sched = engine.status().scheduler
        t_start = time.monotonic()
        records = replay(engine.submit, items, make, timeout_s)
        wall = time.monotonic() - t_start
        sched = engine.status().scheduler
        sched = {
            "dispatched": sched["dispatched"] - base_sched["dispatched"],
            "dispatched_out_of_order": sched["dispatched_out_of_order"] - base_sched["dispatched_out_of_order"],
            "max_overtaken_s": _r(sched["max_overtaken_s"]),
        }
        digest_ok = engine.status().digest_ok
        swaps = _swaps(engine) - before
    finally:
        engine.close()
    summary, lat = summarize(
        records,
        swaps=swaps,
        swaps_source="lora_engine_swaps_total delta (returns to the base included)",
        wall_s=wall,
        max_wait_s=max_wait_s,
        scheduler=sched,
        grouped=grouped,
    )
    summary["engine"] = {
        "group_by_adapter": grouped,
        "prefetch": grouped,
        "max_wait_s": _r(max_wait_s),
        "digest_ok": digest_ok,
        **warm,
    }
    return summary, lat


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft", "huggingface_hub", "httpx", "lora_engine.adapters.fetch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
    except Exception:  # only noise control
        pass


def run_benchmark(
    *,
    hub: FakeHub,
    assets,
    work_dir: Path,
    requests: int = 300,
    loads=(0.8, 1.2),
    adapters: int = 50,
    download_delay_s: float = 0.3,
    steps: int = 4,
    guidance: float = 5.0,
    seed: int = 0,
    zipf_s: float = 1.1,
    base_fraction: float = 0.1,
    trace_kind: str = "zipf",
    max_wait_factor: float = 5.0,
    max_wait_s: float | None = None,
    cold_requests: int = 30,
    modes=MODES,
    capacity_samples: int = 12,
    out_dir: Path | None = None,
    png: bool = True,
) -> dict:
    """Run every mode at every load on the same trace; returns the result object (also written to ``out_dir``).

    ``hub`` is a started ``FakeHub`` that ``HF_ENDPOINT`` already points at (the test session's, or the one
    ``main`` starts); its ``delay_s``/``delay_paths`` knobs are set for the run and restored after.
    """
    _quiet_libraries()
    t_all = time.monotonic()
    load_at_start = os.getloadavg()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(assets.model_dir)

    _log(f"publishing {adapters} adapters on {hub.url}")
    published = publish_adapters(Path(hub.root), assets, adapters)
    ids = [p.repo_id for p in published]
    weight_names = {p.repo_id: p.weight_name for p in published}
    trace = make_trace(requests, ids, seed=seed, zipf_s=zipf_s, base_fraction=base_fraction, kind=trace_kind)

    _log("measuring capacity (warm requests)")
    capacity = measure_service_time(
        model_dir, work_dir / "cache-capacity", ids[0], steps=steps, guidance=guidance, warmup=3, n=capacity_samples
    )
    service = capacity["service_time_s"]
    capacity["requests_per_s"] = _r(1.0 / service)
    wait_s = max_wait_s if max_wait_s is not None else max_wait_factor * service
    _log(f"service time {service:.3f}s (mean {capacity['mean_s']:.3f}s); max_wait_s {wait_s:.3f}")

    old_knobs = (hub.delay_s, hub.delay_paths)
    hub.delay_s, hub.delay_paths = download_delay_s, r"/resolve/"
    results: dict = {}
    latencies: dict = {}
    try:
        for load in loads:
            tag = f"{load:g}"
            rate = load / service
            items = [(it, it.at_unit * service / load) for it in trace]
            results[tag] = {"load": load, "rate_per_s": _r(rate), "trace_span_s": _r(items[-1][1], 2), "modes": {}}
            latencies[tag] = {}
            for mode in modes:
                sub = items[:cold_requests] if mode == "d_cold_boot" else items
                if not sub:
                    continue
                _log(f"load {tag}: {mode} ({len(sub)} requests over {sub[-1][1]:.1f}s)")
                gc.collect()
                summary, lat = _run_mode(
                    mode,
                    sub,
                    hub=hub,
                    model_dir=model_dir,
                    work=work_dir,
                    tag=tag,
                    weight_names=weight_names,
                    adapters=ids,
                    steps=steps,
                    guidance=guidance,
                    max_wait_s=wait_s,
                    timeout_s=max(600.0, 60 * len(sub)),
                )
                if mode == "d_cold_boot":
                    summary["subsample"] = f"the first {len(sub)} requests of the trace, at their arrival times"
                results[tag]["modes"][mode] = summary
                latencies[tag][mode] = lat
                _log(
                    f"  mean {summary['latency_s']['mean']}s p95 {summary['latency_s']['p95']}s swaps/req "
                    f"{summary['swaps_per_request']} swap share {summary['swap_share']} fetch share "
                    f"{summary['fetch_share']} wall {summary['wall_s']}s"
                )
    finally:
        hub.delay_s, hub.delay_paths = old_knobs

    used = Counter(it.lora for it in trace)
    out = {
        "benchmark": "trace",
        "settings": {
            "requests": requests,
            "loads": list(loads),
            "adapters": adapters,
            "trace_kind": trace_kind,
            "zipf_s": zipf_s,
            "base_fraction": base_fraction,
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance,
            "side": SIDE,
            "download_delay_s": download_delay_s,
            "download_delay_applies_to": "every /resolve/ call: HEAD and GET, so a cold fetch waits twice",
            "max_wait_s": _r(wait_s),
            "max_wait_factor": None if max_wait_s is not None else max_wait_factor,
            "cold_requests": min(cold_requests, requests),
            "modes": list(modes),
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": _torch_threads(),
            "loadavg_1m_start": _r(load_at_start[0], 2),
            "loadavg_1m_end": _r(os.getloadavg()[0], 2),
        },
        "capacity": capacity,
        "trace": {
            "distinct_adapters_requested": len([k for k in used if k]),
            "base_requests": used.get("", 0),
            "top_adapter_share": _r(max((v for k, v in used.items() if k), default=0) / requests, 3),
            "adapter_file_bytes": sum(p.nbytes for p in published),
        },
        "loads": results,
        "targets": targets(results, loads),
    }
    out["wall_s"] = _r(time.monotonic() - t_all, 1)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if png:
            out["cdf_png"] = plot_cdfs(latencies, out_dir / "trace_cdf.png")
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def targets(results: dict, loads) -> dict:
    out: dict = {}
    low = min(loads, key=lambda x: abs(x - 0.8))
    modes = results[f"{low:g}"]["modes"]
    a, c = modes.get("a_reference"), modes.get("c_engine_grouped")
    if a and c and a["latency_s"]["mean"] and c["latency_s"]["mean"]:
        ratio = a["latency_s"]["mean"] / c["latency_s"]["mean"]
        out["c_mean_latency_2x_better_than_a_at_0.8"] = {
            "load": low,
            "a_mean_s": a["latency_s"]["mean"],
            "c_mean_s": c["latency_s"]["mean"],
            "ratio_a_over_c": _r(ratio, 2),
            "need": 2.0,
            "pass": ratio >= 2.0,
        }
    shares = {
        tag: r["modes"]["c_engine_grouped_warm"]["swap_share"]
        for tag, r in results.items()
        if "c_engine_grouped_warm" in r["modes"]
    }
    if shares:
        worst = max(shares.values())
        out["c_warm_swap_share_under_5pct"] = {
            "swap_share_by_load": shares,
            "worst": worst,
            "need_below": 0.05,
            "pass": worst < 0.05,
        }
    checks = {}
    for tag, r in results.items():
        for m in GROUPED_MODES:
            if m in r["modes"]:
                s = r["modes"][m]
                b = s["wait_bound"]
                checks[f"{tag}/{m}"] = {
                    "bound_s": b["bound_s"],
                    "max_younger_work_s": b["max_younger_work_s"],
                    "max_beyond_fifo_s": b["max_beyond_fifo_s"],
                    "scheduler_max_overtaken_s": s["wait_beyond_fifo_s"]["scheduler_max_overtaken_s"],
                    "violations": b["violations"],
                    "pass": b["pass"],
                }
    if checks:
        out["wait_bound_never_broken"] = {"checks": checks, "pass": all(v["pass"] for v in checks.values())}
    return out


def plot_cdfs(latencies: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no PNG (pip install -r requirements-dev.txt)")
        return None
    tags = list(latencies)
    fig, axes = plt.subplots(1, len(tags), figsize=(6 * len(tags), 4.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for mode, lat in latencies[tag].items():
            if lat:
                ys = [(i + 1) / len(lat) for i in range(len(lat))]
                note = f"first {len(lat)} requests only" if mode == "d_cold_boot" else f"n={len(lat)}"
                ax.step(lat, ys, where="post", label=f"{mode} ({note})")
        ax.set_xscale("log")
        ax.set_xlabel("latency, finish - arrival (s, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"load {tag} x capacity")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 requests, 8 adapters, 4 cold-boot requests")
    parser.add_argument("--requests", type=int, default=None, help="trace length (default 300; --quick 30)")
    parser.add_argument("--loads", default="0.8,1.2", help="fractions of measured capacity, comma-separated")
    parser.add_argument("--adapters", type=int, default=None, help="distinct Hub repos (default 50; --quick 8)")
    parser.add_argument("--download-delay-s", type=float, default=0.3, help="fake Hub delay per /resolve/ call")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance_scale (> 1: two UNet passes/step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--base-fraction", type=float, default=0.1, help="share of base-model requests (lora='')")
    parser.add_argument("--max-wait-factor", type=float, default=5.0, help="max_wait_s = this x service time")
    parser.add_argument("--max-wait-s", type=float, default=None, help="overrides --max-wait-factor")
    parser.add_argument(
        "--cold-requests", type=int, default=None, help="cold-boot subsample (default 30; --quick 4; 0: skip)"
    )
    parser.add_argument("--demo-dir", default=None, help="demo model cache (default ~/.cache/sdxl-lora-server)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "trace.json"))
    args = parser.parse_args(argv)
    requests = args.requests or (30 if args.quick else 300)
    n_adapters = args.adapters or (8 if args.quick else 50)
    cold = args.cold_requests if args.cold_requests is not None else (4 if args.quick else 30)
    loads = tuple(float(x) for x in args.loads.split(",") if x.strip())

    work = Path(tempfile.mkdtemp(prefix="trace-bench-"))
    hub = start_for_this_process(work)  # before anything imports huggingface_hub
    try:
        from lora_engine.demo.model import ensure_demo_assets

        assets = ensure_demo_assets(Path(args.demo_dir) if args.demo_dir else None)
        out_path = Path(args.out)
        result = run_benchmark(
            hub=hub,
            assets=assets,
            work_dir=work / "run",
            requests=requests,
            loads=loads,
            adapters=n_adapters,
            download_delay_s=args.download_delay_s,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            zipf_s=args.zipf_s,
            base_fraction=args.base_fraction,
            max_wait_factor=args.max_wait_factor,
            max_wait_s=args.max_wait_s,
            cold_requests=cold,
            out_dir=out_path.parent,
        )
        result["settings"]["quick"] = args.quick
        emit(result, args.out)
        return result
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
