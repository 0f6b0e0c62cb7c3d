"""Smoke test of ``bench/cluster.py``: the whole benchmark in-process on a tiny trace, on a local Ray. Structure and
routing invariants only; throughput depends on the machine and is not checked.

Four adapters requested in turn (a0 a1 a2 a3 a0 ...), arriving in a burst, on the session's loopback Hub.
"""

from __future__ import annotations

import json

import pytest

from bench import cluster as cluster_bench

pytestmark = pytest.mark.slow

RUNS = {"1x_multiplexed", "1x_random", "2x_multiplexed", "2x_random"}


def test_cluster_benchmark_runs_both_sizes_both_routings(fake_hub, demo_assets, tmp_path):
    import ray

    result = cluster_bench.run_benchmark(
        hub=fake_hub,
        assets=demo_assets,
        work_dir=tmp_path / "work",
        requests=12,
        loads=(20.0,),
        adapters=4,
        download_delay_s=0.02,
        steps=1,
        seed=3,
        trace_kind="round_robin",
        cpus_per_replica=0.5,
        gpus_per_replica=0,
        adapters_per_replica=4,
        max_ongoing_requests=4,
        capacity_samples=3,
        ray_num_cpus=2,
    )
    json.dumps(result)  # one JSON object
    assert not ray.is_initialized()  # it started Ray, so it stopped it
    assert fake_hub.delay_s == 0.0  # the knobs it set are restored

    assert set(result["loads"]) == {"20"} and result["capacity"]["service_time_s"] > 0
    runs = result["loads"]["20"]["runs"]
    assert set(runs) == RUNS
    for tag, run in runs.items():
        assert (run["requests"], run["completed"], run["completed_unique"]) == (12, 12, 12), (tag, run["errors"])
        assert run["failed"] == 0 and run["completed_more_than_once"] == 0 and run["retried"] == 0
        assert run["replicas"] == int(tag[0]) and run["replicas_that_served"] <= run["replicas"]
        assert sum(r["requests"] for r in run["per_replica"].values()) == 12
        assert run["swaps"] == sum(r["swaps"] for r in run["per_replica"].values())
    # Two replicas both served, whatever the routing (a burst of 12 is more than one replica takes at once).
    assert runs["2x_random"]["replicas_that_served"] == 2

    comparison = result["loads"]["20"]["comparison"]
    assert set(comparison["throughput_scaling_1x_to_2x"]) == {"multiplexed", "random"}
    assert set(comparison["swaps_per_request"]) == {"1x", "2x"}
    assert set(comparison["swaps_per_request_random_over_multiplexed"]) == {"1x", "2x"}
