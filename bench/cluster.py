"""Cluster benchmark: the trace of ``bench/trace.py`` against a Ray Serve application of 1 and 2 replicas, routed
by adapter (Serve's multiplexing) and at random (multiplexing off), in one run; one JSON.

For: the scale-out numbers (the README's "Scaling out on Ray Serve"), on the offline demo model, every figure taken
on the same machine under the same trace: throughput scaling from 1 to 2 replicas, and swaps per request with
adapter-aware routing against random routing. The trace is ``bench/trace.py``'s (seeded Poisson arrivals, Zipf
popularity over N Hub adapters on a loopback fake Hub, a share of base-model requests), replayed at each of
``--loads`` times the capacity of ONE replica: 1.5 (two replicas at 75 %), and 2.5, which saturates both sizes, so
throughput shows what the replicas can do. Serve's router sends a request to a replica holding its adapter while one
has room, and after ``RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S`` (1 s) of waiting to any: under saturation,
affinity gives way to balance.

At each load, each of the four runs (``1x_multiplexed``, ``1x_random``, ``2x_multiplexed``, ``2x_random``) deploys
a fresh application (``lora_engine.serving.cluster``, one deployment for the demo model presented as SDXL base)
with a cold
adapter cache, replays the whole trace through a ``ClusterClient`` (``multiplexed=False``: requests go to any
replica), and deletes it. Swaps are counted per replica by its engine (``lora_engine_swaps_total``, returns to the
base included) and reported with every result (``details["replica_swaps"]``).

Capacity is the median wall time of a warm request (adapter already in the weights) through the first application
(one replica), measured just before its run with an adapter that is not in the trace (so that run starts with one
more adapter held, and its first swap is from that adapter rather than from the base: the same cost).

Not for: absolute speed (the demo model is tiny and the machine may be shared: read ratios). On a machine with
fewer free cores than replicas x ``--cpus-per-replica``, replicas share cores and scaling is bounded by them
(``machine.cpus`` is reported).

Usage: ``python bench/cluster.py [--quick] [--requests 200] [--adapters 30] [--loads 1.5,2.5] [--download-delay-s 0.3]
[--steps 4] [--seed 0] [--cpus-per-replica 1] [--gpus-per-replica auto] [--adapters-per-replica 8]
[--max-ongoing-requests 4] [--out bench/out/cluster.json]``. Needs ``pip install -r requirements-ray.txt``.
The JSON goes to stdout and ``--out``; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Stdlib + yaml only: importing these does not import huggingface_hub, so HF_ENDPOINT can still be set after.
from bench._out import emit
from bench.trace import (
    PROMPT,
    SDXL_BASE,
    SIDE,
    TraceItem,
    _quiet_libraries,
    _r,
    make_trace,
    publish_adapters,
    replay,
    summarize,
)
from lora_engine.testing.loopback_hub import FakeHub, start_for_this_process, write_repo

REPLICA_COUNTS = (1, 2)
ROUTINGS = ("multiplexed", "random")
#: Arrival rates in multiples of ONE replica's capacity: 1.5 keeps two replicas at 75 % (requests rarely wait long
#: for the replica holding their adapter); 2.5 saturates both (throughput shows what they can do).
LOADS = (1.5, 2.5)
CAPACITY_ADAPTER = "cluster-bench/capacity-probe"
# Keys of bench/trace.py's summary that assume one worker (its FIFO replay): meaningless across replicas.
_SINGLE_WORKER_KEYS = ("wait_beyond_fifo_s",)


def _log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _request(item: TraceItem, steps: int, guidance: float, lora: str | None = None):
    from lora_engine import GenerationRequest

    return GenerationRequest(
        PROMPT,
        lora=item.lora if lora is None else lora,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=SIDE,
        height=SIDE,
        seed=item.idx,
    )


def _cluster(
    model_dir: Path,
    cache: Path,
    *,
    replicas: int,
    steps: int,
    queue: int,
    cpus: float,
    gpus: float | None,
    adapters_per_replica: int,
    max_ongoing: int,
):
    from lora_engine import EngineConfig
    from lora_engine.serving.config import ClusterConfig, DeploymentSpec

    engine = EngineConfig(
        model_id=str(model_dir),
        base_model_id=SDXL_BASE,
        hub_cache_dir=str(cache),
        hub_timeout_s=60.0,
        default_steps=steps,
        default_side=SIDE,
        max_queue=queue,
    )
    spec = DeploymentSpec(
        engine=engine,
        replicas=replicas,
        cpus_per_replica=cpus,
        gpus_per_replica=gpus,
        adapters_per_replica=adapters_per_replica,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=queue,
        name="bench",
    )
    return ClusterConfig(deployments=(spec,), app_name="cluster-bench", retries=0)


def measure_capacity(client, *, steps: int, guidance: float, warmup: int, n: int) -> dict:
    """Median wall time of a warm request through the application (its adapter already in the weights)."""
    item = TraceItem(0, 0.0, CAPACITY_ADAPTER)
    for _ in range(warmup):
        client.generate(_request(item, steps, guidance))
    times = []
    for i in range(n):
        t = time.monotonic()
        client.generate(_request(TraceItem(i, 0.0, CAPACITY_ADAPTER), steps, guidance))
        times.append(time.monotonic() - t)
    return {
        "service_time_s": _r(statistics.median(times)),
        "mean_s": _r(statistics.fmean(times)),
        "min_s": _r(min(times)),
        "max_s": _r(max(times)),
        "samples": n,
        "how": f"median wall time of {n} requests through the 1-replica application (ingress + replica), for "
        f"{CAPACITY_ADAPTER} (not in the trace) already in the weights, after {warmup} warm-up requests",
    }


def per_replica(results) -> dict:
    """Requests and swaps per replica, from the results' ``details`` (swaps: the replica's counter after its last
    request; replicas start at 0)."""
    out: dict = {}
    for res in results:
        d = res.details
        row = out.setdefault(d["replica"], {"requests": 0, "swaps": 0})
        row["requests"] += 1
        row["swaps"] = max(row["swaps"], d["replica_swaps"])
    return out


def run_one(
    tag: str,
    arrivals,
    *,
    hub: FakeHub,
    model_dir: Path,
    work: Path,
    replicas: int,
    multiplexed: bool,
    steps: int,
    guidance: float,
    cpus: float,
    gpus: float | None,
    adapters_per_replica: int,
    max_ongoing: int,
    queue: int,
    capacity: dict | None = None,
    capacity_samples: int = 8,
) -> dict:
    """Deploy a fresh application, replay the trace, delete it; the run's summary.

    ``arrivals(service_time_s)`` gives the trace's ``(item, arrival_s)`` pairs. With ``capacity`` (a dict), the
    service time is first measured on this application and written there; else ``arrivals(None)``.
    """
    from lora_engine.serving.cluster import start

    cache = work / f"cache-{tag}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    config = _cluster(
        model_dir,
        cache,
        replicas=replicas,
        steps=steps,
        queue=queue,
        cpus=cpus,
        gpus=gpus,
        adapters_per_replica=adapters_per_replica,
        max_ongoing=max_ongoing,
    )
    t0 = time.monotonic()
    client = start(config)
    startup_s = time.monotonic() - t0
    try:
        if capacity is not None:
            delay = hub.delay_s
            hub.delay_s = 0.0  # not measured: the probe's own download
            try:
                capacity.update(measure_capacity(client, steps=steps, guidance=guidance, warmup=3, n=capacity_samples))
            finally:
                hub.delay_s = delay
            items = arrivals(capacity["service_time_s"])
        else:
            items = arrivals(None)
        results = []

        def submit(request):
            future = client.submit_routed(request, multiplexed=multiplexed)
            future.add_done_callback(lambda f: f.exception() is None and results.append(f.result()))
            return future

        t_start = time.monotonic()
        records = replay(submit, items, lambda item: _request(item, steps, guidance), max(600.0, 30 * len(items)))
        wall = time.monotonic() - t_start
    finally:
        client.close()
    rows = per_replica(results)
    swaps = sum(row["swaps"] for row in rows.values())
    summary, _ = summarize(
        records,
        swaps=swaps,
        swaps_source="sum over replicas of lora_engine_swaps_total (returns "
        "to the base included), from details['replica_swaps']",
        wall_s=wall,
        max_wait_s=None,
        scheduler=None,
        grouped=False,
    )
    for key in _SINGLE_WORKER_KEYS:
        summary.pop(key, None)
    summary.update(
        {
            "replicas": replicas,
            "routing": "multiplexed" if multiplexed else "random",
            "replicas_that_served": len(rows),
            "per_replica": rows,
            "startup_s": _r(startup_s, 2),
            "retried": sum(1 for r in results if r.details.get("attempts", 1) > 1),
        }
    )
    return summary


def run_benchmark(
    *,
    hub: FakeHub,
    assets,
    work_dir: Path,
    requests: int = 200,
    loads=LOADS,
    adapters: int = 30,
    download_delay_s: float = 0.3,
    steps: int = 4,
    guidance: float = 5.0,
    seed: int = 0,
    zipf_s: float = 1.1,
    base_fraction: float = 0.1,
    trace_kind: str = "zipf",
    replica_counts=REPLICA_COUNTS,
    routings=ROUTINGS,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float | None = None,
    adapters_per_replica: int = 8,
    max_ongoing_requests: int = 4,
    capacity_samples: int = 8,
    ray_num_cpus: float | None = None,
) -> dict:
    """Run every (replicas, routing) pair at every load on the same trace; returns the result object.

    ``hub`` is a started ``FakeHub`` that ``HF_ENDPOINT`` already points at; its delay knobs are set for the run and
    restored after. Ray is started here (and shut down after) unless it already runs in this process.
    """
    import ray
    from ray import serve

    _quiet_libraries()
    t_all = time.monotonic()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(assets.model_dir)

    _log(f"publishing {adapters} adapters on {hub.url}")
    published = publish_adapters(Path(hub.root), assets, adapters)
    probe = published[0]
    write_repo(
        hub.root,
        CAPACITY_ADAPTER,
        files={probe.weight_name: (Path(hub.root) / probe.repo_id / probe.weight_name).read_bytes()},
        card={"tags": ["lora"], "base_model": SDXL_BASE},
    )
    ids = [p.repo_id for p in published]
    trace = make_trace(requests, ids, seed=seed, zipf_s=zipf_s, base_fraction=base_fraction, kind=trace_kind)

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=ray_num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    old_knobs = (hub.delay_s, hub.delay_paths)
    hub.delay_s, hub.delay_paths = download_delay_s, r"/resolve/"
    results: dict = {}
    capacity: dict = {}
    common = dict(
        hub=hub,
        model_dir=model_dir,
        work=work_dir,
        steps=steps,
        guidance=guidance,
        cpus=cpus_per_replica,
        gpus=gpus_per_replica,
        adapters_per_replica=adapters_per_replica,
        max_ongoing=max_ongoing_requests,
    )

    def arrivals_at(load: float):
        def arrivals(measured: float | None):
            # The first run measures the service time; every run replays the trace at arrival times scaled by it.
            if measured is not None:
                capacity["requests_per_s"] = _r(1.0 / measured)
                _log(f"service time {measured:.3f}s")
            service = capacity["service_time_s"]
            return [(it, it.at_unit * service / load) for it in trace]

        return arrivals

    try:
        first = True
        for load in loads:
            runs: dict = {}
            for replicas in replica_counts:
                for routing in routings:
                    tag = f"{replicas}x_{routing}"
                    note = " (capacity measured first)" if first else ""
                    _log(f"load {load:g}: {tag}: deploying and replaying{note}")
                    gc.collect()
                    summary = run_one(
                        tag,
                        arrivals_at(load),
                        replicas=replicas,
                        multiplexed=routing == "multiplexed",
                        queue=requests + 8,
                        capacity=capacity if first else None,
                        capacity_samples=capacity_samples,
                        **common,
                    )
                    first = False
                    runs[tag] = summary
                    rows = [(r["requests"], r["swaps"]) for r in summary["per_replica"].values()]
                    _log(
                        f"  {summary['completed']}/{summary['requests']} done, throughput "
                        f"{summary['throughput_rps']}/s, swaps/request {summary['swaps_per_request']}, mean latency "
                        f"{summary['latency_s']['mean']}s, (requests, swaps) per replica {rows}"
                    )
            service = capacity["service_time_s"]
            results[f"{load:g}"] = {
                "load_x_one_replica": load,
                "rate_per_s": _r(load / service),
                "trace_span_s": _r(trace[-1].at_unit * service / load, 2),
                "runs": runs,
                "comparison": compare(runs, replica_counts, routings),
            }
    finally:
        hub.delay_s, hub.delay_paths = old_knobs
        if started_ray:
            serve.shutdown()
            ray.shutdown()

    used = Counter(it.lora for it in trace)
    return {
        "benchmark": "cluster",
        "settings": {
            "requests": requests,
            "loads_x_one_replica": list(loads),
            "adapters": adapters,
            "trace_kind": trace_kind,
            "zipf_s": zipf_s,
            "base_fraction": base_fraction,
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance,
            "side": SIDE,
            "download_delay_s": download_delay_s,
            "replica_counts": list(replica_counts),
            "routings": list(routings),
            "cpus_per_replica": cpus_per_replica,
            "gpus_per_replica": gpus_per_replica,
            "adapters_per_replica": adapters_per_replica,
            "max_ongoing_requests": max_ongoing_requests,
            "random_routing": "the same requests without multiplexed_model_id: Serve's power-of-two-choices over "
            "all replicas of the deployment",
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_1m_end": _r(os.getloadavg()[0], 2),
        },
        "capacity": capacity,
        "trace": {
            "distinct_adapters_requested": len([k for k in used if k]),
            "base_requests": used.get("", 0),
            "top_adapter_share": _r(max((v for k, v in used.items() if k), default=0) / max(requests, 1), 3),
        },
        "loads": results,
        "wall_s": _r(time.monotonic() - t_all, 1),
    }


def compare(runs: dict, replica_counts, routings) -> dict:
    """Throughput scaling (most replicas over fewest) per routing, and swaps per request side by side."""
    out: dict = {"swaps_per_request": {}, "throughput_rps": {}}
    for n in replica_counts:
        out["swaps_per_request"][f"{n}x"] = {r: runs[f"{n}x_{r}"]["swaps_per_request"] for r in routings}
        out["throughput_rps"][f"{n}x"] = {r: runs[f"{n}x_{r}"]["throughput_rps"] for r in routings}
    lo, hi = min(replica_counts), max(replica_counts)
    if hi > lo:
        out[f"throughput_scaling_{lo}x_to_{hi}x"] = {
            r: _ratio(runs[f"{hi}x_{r}"]["throughput_rps"], runs[f"{lo}x_{r}"]["throughput_rps"]) for r in routings
        }
    if {"multiplexed", "random"} <= set(routings):
        out["swaps_per_request_random_over_multiplexed"] = {
            f"{n}x": _ratio(runs[f"{n}x_random"]["swaps_per_request"], runs[f"{n}x_multiplexed"]["swaps_per_request"])
            for n in replica_counts
        }
    return out


def _ratio(a, b) -> float | None:
    if a is None or b is None or not b or (isinstance(b, float) and math.isnan(b)):
        return None
    return _r(a / b, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="80 requests over 8 adapters, 2 per replica")
    parser.add_argument("--requests", type=int, default=None, help="trace length (default 200; --quick 80)")
    parser.add_argument("--adapters", type=int, default=None, help="distinct Hub repos (default 30; --quick 8)")
    parser.add_argument(
        "--loads",
        default=",".join(f"{x:g}" for x in LOADS),
        help="arrival rates, in multiples of one replica's capacity, comma-separated",
    )
    parser.add_argument("--download-delay-s", type=float, default=0.3, help="fake Hub delay per /resolve/ call")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--base-fraction", type=float, default=0.1)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--gpus-per-replica", default="auto", help="'auto': 1 when Ray sees GPUs, else 0")
    parser.add_argument("--adapters-per-replica", type=int, default=None, help="default 8; --quick 2")
    parser.add_argument("--max-ongoing-requests", type=int, default=4)
    parser.add_argument("--ray-num-cpus", type=float, default=None, help="CPUs the local Ray may use (default: all)")
    parser.add_argument("--demo-dir", default=None, help="demo model cache (default ~/.cache/sdxl-lora-server)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "cluster.json"))
    args = parser.parse_args(argv)
    requests = args.requests or (80 if args.quick else 200)
    n_adapters = args.adapters or (8 if args.quick else 30)
    gpus = None if args.gpus_per_replica == "auto" else float(args.gpus_per_replica)
    loads = tuple(float(x) for x in args.loads.split(",") if x.strip())
    # Serve's multiplexing tells replicas apart only when each holds fewer adapters than the trace uses.
    per_replica = args.adapters_per_replica or (2 if args.quick else 8)

    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    hub = start_for_this_process(work)  # before anything imports huggingface_hub
    try:
        from lora_engine.demo.model import ensure_demo_assets

        assets = ensure_demo_assets(Path(args.demo_dir) if args.demo_dir else None)
        # Ray prints its own messages to stdout (at shutdown, too); stdout is for the one JSON object.
        with contextlib.redirect_stdout(sys.stderr):
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
                cpus_per_replica=args.cpus_per_replica,
                gpus_per_replica=gpus,
                adapters_per_replica=per_replica,
                max_ongoing_requests=args.max_ongoing_requests,
                ray_num_cpus=args.ray_num_cpus,
            )
        result["settings"]["quick"] = args.quick
        emit(result, args.out)
        return result
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
